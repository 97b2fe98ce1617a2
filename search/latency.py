"""Latency predictors for the search: the interface and a FLOPs proxy.

A predictor is a pure function of the architecture (no model is built): ``predict(arch)``
returns milliseconds. The measured one, ``lut.LutLatencyPredictor``, reads the LUT JSON written
by ``export/lut_builder.py`` (both import ``elasticvit_tf/lut.py``); ``FlopsProxyPredictor`` is
the fallback when no LUT was measured.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.flops import count_flops
from elasticvit_tf.space import SearchSpace


@runtime_checkable
class LatencyPredictor(Protocol):
    """Anything with a ``space``, a ``mode`` and ``predict(arch) -> float`` milliseconds."""

    space: SearchSpace
    mode: str

    def predict(self, arch: ArchConfig) -> float: ...


class FlopsProxyPredictor:
    """Latency as an affine function of the official MFLOPs: ``constant_ms + k * MFLOPs``.

    Monotone in FLOPs for ``ms_per_mflop > 0``. Use it when no LUT exists for the target, or
    calibrate it on a few measured subnets with ``fit``.

    Args:
        space: the search space archs come from.
        ms_per_mflop: slope, milliseconds per MFLOP (> 0).
        constant_ms: intercept, milliseconds (>= 0).
    """

    mode = "flops"

    def __init__(self, space: SearchSpace, ms_per_mflop: float = 1.0, constant_ms: float = 0.0):
        if not isinstance(space, SearchSpace):
            raise ValueError(f"space: expected a SearchSpace, got {type(space).__name__}")
        if not np.isfinite(ms_per_mflop) or ms_per_mflop <= 0:
            raise ValueError(f"ms_per_mflop={ms_per_mflop!r}: expected a finite value > 0")
        if not np.isfinite(constant_ms) or constant_ms < 0:
            raise ValueError(f"constant_ms={constant_ms!r}: expected a finite value >= 0")
        self.space = space
        self.ms_per_mflop = float(ms_per_mflop)
        self.constant_ms = float(constant_ms)

    def predict(self, arch: ArchConfig) -> float:
        self.space.validate_arch(arch)
        return self.constant_ms + self.ms_per_mflop * count_flops(self.space, arch)

    @classmethod
    def fit(
        cls, space: SearchSpace, archs: Sequence[ArchConfig], latencies_ms: Sequence[float]
    ) -> "FlopsProxyPredictor":
        """Least-squares slope and intercept from measured subnets (intercept clipped at 0)."""
        if len(archs) != len(latencies_ms) or len(archs) < 2:
            raise ValueError(
                f"fit: got {len(archs)} archs and {len(latencies_ms)} latencies; expected the "
                "same number, at least 2"
            )
        x = np.array([count_flops(space, a) for a in archs])
        y = np.asarray(latencies_ms, dtype=np.float64)
        slope, intercept = np.polyfit(x, y, 1)
        if slope <= 0:
            slope, intercept = float(np.sum(y) / np.sum(x)), 0.0
        return cls(space, ms_per_mflop=float(slope), constant_ms=max(float(intercept), 0.0))

    def get_config(self) -> dict:
        return {
            "space": self.space.name,
            "ms_per_mflop": self.ms_per_mflop,
            "constant_ms": self.constant_ms,
        }

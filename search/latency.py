"""Latency predictors for the search: a FLOPs proxy and a measured lookup table (LUT).

A predictor is a pure function of the architecture (no model is built): ``predict(arch)``
returns milliseconds. ``FlopsProxyPredictor`` is the fallback when no LUT was measured;
``LutLatencyPredictor`` reads the versioned JSON written by ``export/lut_builder.py`` (the two
packages exchange that file, they never import each other).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.flops import count_flops
from elasticvit_tf.latency_ops import OpSignature, decompose, op_features
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


# ------------------------------------------------------------------------------- LUT
LUT_FORMAT = "elasticvit-latency-lut"
LUT_VERSION = 1
_MODE_ALIASES = {"fp32": "fp32", "float32": "fp32", "int8": "int8"}


def _canonical_mode(mode: str) -> str:
    m = _MODE_ALIASES.get(str(mode).strip().lower())
    if m is None:
        raise ValueError(f"mode={mode!r}: expected one of ['fp32', 'int8'] (or 'float32')")
    return m


class LutLatencyPredictor:
    """Predicts a subnet's latency from a measured LUT (``export/lut_builder.py``).

    ``predict(arch) = scale * sum over the arch's blocks of (the measured latency when the
    block's signature was measured, else the block type's fitted linear model) + constant_ms``.

    Use ``from_json``; the constructor takes already-parsed parts.

    Args:
        space: the search space (its fingerprint must match the LUT's).
        mode: quantization mode of the LUT ("fp32" or "int8").
        entries: measured block latencies (ms) by signature.
        models: per block type ``{"features", "coef", "intercept"}``.
        constant_ms: fitted per-model constant.
        scale: fitted multiplier of the block sum (1.0 when only a constant was fitted).
        provenance: the LUT's provenance record.
    """

    def __init__(
        self,
        space: SearchSpace,
        mode: str,
        entries: Mapping[OpSignature, float],
        models: Mapping[str, Mapping[str, Any]],
        constant_ms: float = 0.0,
        scale: float = 1.0,
        provenance: Optional[Mapping[str, Any]] = None,
    ):
        self.space = space
        self.mode = _canonical_mode(mode)
        self.entries = dict(entries)
        self.models = {k: dict(v) for k, v in models.items()}
        self.constant_ms = float(constant_ms)
        self.scale = float(scale)
        self.provenance = dict(provenance or {})
        self._cache: dict[OpSignature, float] = {}
        for kind, m in self.models.items():
            if len(m.get("features", ())) != len(m.get("coef", ())) or "intercept" not in m:
                raise ValueError(
                    f"LUT model '{kind}': expected 'features' and 'coef' of equal length and an "
                    f"'intercept', got keys {sorted(m)}"
                )

    @classmethod
    def from_json(
        cls,
        path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
        space: SearchSpace,
        mode: Optional[str] = None,
    ) -> "LutLatencyPredictor":
        """Loads a LUT; refuses another space (by fingerprint) or another mode, naming both."""
        if isinstance(path_or_dict, Mapping):
            d, where = path_or_dict, "LUT"
        else:
            where = f"LUT {os.fspath(path_or_dict)!r}"
            try:
                with open(path_or_dict) as f:
                    d = json.load(f)
            except OSError as e:
                raise ValueError(f"{where}: cannot read it ({e.strerror})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e})") from None
        if not isinstance(d, Mapping) or d.get("format") != LUT_FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"{where}: format={got!r}, expected {LUT_FORMAT!r}")
        if d.get("version") != LUT_VERSION:
            raise ValueError(f"{where}: version={d.get('version')!r}, expected {LUT_VERSION}")
        missing = sorted({"space_fingerprint", "mode", "entries", "models", "constant_ms"} - set(d))
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        if d["space_fingerprint"] != space.fingerprint():
            raise ValueError(
                f"{where} was built for space {d.get('space')!r} with fingerprint "
                f"{d['space_fingerprint']!r}, but the requested space {space.name!r} has "
                f"fingerprint {space.fingerprint()!r}; rebuild the LUT with elasticvit-lut"
            )
        lut_mode = _canonical_mode(d["mode"])
        if mode is not None and _canonical_mode(mode) != lut_mode:
            raise ValueError(
                f"{where} holds mode {lut_mode!r} latencies, but mode {_canonical_mode(mode)!r} "
                "was requested; use the LUT built for that mode"
            )
        entries = {}
        for i, e in enumerate(d["entries"]):
            try:
                entries[OpSignature.from_dict(e["op"])] = float(e["latency_ms"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{where}: entries[{i}] is invalid ({err})") from None
        return cls(
            space,
            lut_mode,
            entries,
            d["models"],
            d["constant_ms"],
            d.get("scale", 1.0),
            d.get("provenance"),
        )

    def block_latency(self, sig: OpSignature) -> float:
        """One block's latency (ms): the measured entry, else its type's fitted model."""
        if sig in self._cache:
            return self._cache[sig]
        if sig in self.entries:
            ms = self.entries[sig]
        else:
            m = self.models.get(sig.kind.value)
            if m is None:
                raise ValueError(
                    f"LUT has no entry and no fitted model for a '{sig.kind.value}' block; "
                    f"it has models for {sorted(self.models)}"
                )
            f = op_features(sig)
            ms = m["intercept"] + sum(c * f[n] for c, n in zip(m["coef"], m["features"]))
            ms = max(float(ms), 0.0)
        self._cache[sig] = ms
        return ms

    def predict(self, arch: ArchConfig) -> float:
        """Predicted whole-subnet latency in ms (validates the arch)."""
        total = sum(self.block_latency(s) for s in decompose(self.space, arch))
        return self.scale * total + self.constant_ms

    def breakdown(self, arch: ArchConfig) -> list[tuple[OpSignature, float, bool]]:
        """``(signature, ms, measured)`` per block, in execution order."""
        return [(s, self.block_latency(s), s in self.entries) for s in decompose(self.space, arch)]


def load_predictor(
    path: Union[str, os.PathLike, Mapping[str, Any]], space: SearchSpace, mode: Optional[str] = None
) -> LutLatencyPredictor:
    """``LutLatencyPredictor.from_json(path, space, mode)``."""
    return LutLatencyPredictor.from_json(path, space, mode)

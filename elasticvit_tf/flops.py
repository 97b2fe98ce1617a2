"""Analytic FLOPs (MACs) and parameter counts: the official formula, exactly (docs/method.md#flops).

No model is built. FLOPs are multiply-accumulates in millions (the official "FLOPs"); the
formulas, their reproduced quirks (docs/method.md#reproduced-flops-quirks) and the encoding of
archs as integer rows live in ``blocks.py``; this module sums them for one arch or for many
encoded archs at once.

Params are those of the standalone subnet (the extracted Keras model's trainable weights):
sliced weights actually used, depthwise kernels at their used size, BN/LN affine (gamma, beta),
biases, relative-position tables at (2s - 1)^2 * heads.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from elasticvit_tf import blocks
from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.space import SearchSpace


def _parts(space: SearchSpace, arch: ArchConfig, num_classes: Optional[int]) -> dict:
    sides = space.feature_sides(arch.resolution)
    return blocks.parts(space, blocks.arch_row(arch), sides, num_classes)


def flops_breakdown(
    space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None
) -> dict[str, float]:
    """MFLOPs per part: 'stem', 'stage0'..'stageN', 'head' (the official per-stage split)."""
    return {k: macs / 1e6 for k, (macs, _) in _parts(space, arch, num_classes).items()}


def count_flops(space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None) -> float:
    """Total MFLOPs (MACs / 1e6) of ``arch`` by the official formula."""
    return sum(flops_breakdown(space, arch, num_classes).values())


def params_breakdown(
    space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None
) -> dict[str, int]:
    """Parameter count per part of the standalone subnet (see module docstring)."""
    return {k: int(p) for k, (_, p) in _parts(space, arch, num_classes).items()}


def count_params(space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None) -> int:
    """Trainable parameters of the standalone subnet (equals the extracted model's count)."""
    return sum(params_breakdown(space, arch, num_classes).values())


# ------------------------------------------------------------------------- encoded archs
def macs_encoded(
    space: SearchSpace, rows: np.ndarray, num_classes: Optional[int] = None
) -> np.ndarray:
    """Exact integer MACs of every encoded row (``blocks.encode``): (n,) int64.

    Equals ``count_flops(space, blocks.decode(space, row)) * 1e6`` row by row.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, blocks.num_columns(space))
    res = np.asarray(space.resolutions)
    idx = np.minimum(np.searchsorted(res, rows[:, 0]), len(res) - 1)
    if np.any(res[idx] != rows[:, 0]):
        raise ValueError(f"encoded resolutions not in space '{space.name}': {list(res)}")
    sides = blocks.sides_table(space, space.resolutions)[idx]
    parts = blocks.parts(space, list(rows.T), list(sides.T), num_classes)
    return sum(macs for macs, _ in parts.values())


def count_flops_encoded(space: SearchSpace, rows: np.ndarray) -> np.ndarray:
    """MFLOPs (float64) of every encoded row."""
    return macs_encoded(space, rows) / 1e6

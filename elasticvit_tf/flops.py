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


def stratified_sample(
    space: SearchSpace, n: int, seed: int, strata: int = 4, exclude=(), bands=None
) -> tuple[list[ArchConfig], list[int]]:
    """``n`` distinct random archs (``seed``), none in ``exclude`` (arch keys), spread evenly
    over ``strata`` equal-width FLOPs bands between the space's min and max arch (only the
    bands listed in ``bands`` when given); returns ``(archs, band of each arch)``, band by band.

    Uniform sampling rarely reaches the top bands of a large space (the ``elasticvit`` space's
    random archs sit mostly below 1 GFLOPs of its 3.2), so a band still short after the draws
    is filled with seeded draws grown towards the max arch (random dimensions set to their
    maximum) until they land in it."""
    rng = np.random.default_rng(seed)
    lo, hi = count_flops(space, space.min_arch()), count_flops(space, space.max_arch())
    edges = np.linspace(lo, hi, strata + 1)
    chosen = list(range(strata)) if bands is None else sorted(set(bands))
    if not chosen or not all(0 <= b < strata for b in chosen):
        raise ValueError(f"bands={bands}: expected indices in [0, {strata})")
    want = [0] * strata
    for j, b in enumerate(chosen):
        want[b] = n // len(chosen) + (j < n % len(chosen))
    bands: list[list[ArchConfig]] = [[] for _ in range(strata)]
    keys = set(exclude)

    def band_of(a):
        return min(int(np.searchsorted(edges, count_flops(space, a), side="right")) - 1, strata - 1)

    for _ in range(200 * n):
        if all(len(b) >= w for b, w in zip(bands, want)):
            break
        a = space.sample(rng)
        i = band_of(a)
        if a.key() in keys or len(bands[i]) >= want[i]:
            continue
        keys.add(a.key())
        bands[i].append(a)
    for i, band in enumerate(bands):
        tries = 0
        while len(band) < want[i] and tries < 2000 * n:
            tries += 1
            a = _grow(space, space.sample(rng), rng, edges[i])
            if edges[i] <= count_flops(space, a) <= edges[i + 1] and a.key() not in keys:
                keys.add(a.key())
                band.append(a)
    return [a for b in bands for a in b], [i for i, b in enumerate(bands) for _ in b]


def _grow(space: SearchSpace, arch: ArchConfig, rng, target: float) -> ArchConfig:
    """``arch`` with random dimensions set to their maximum until its FLOPs reach ``target``."""
    d = arch.to_dict()
    mx = space.max_arch().to_dict()
    for _ in range(64):
        if count_flops(space, ArchConfig.from_dict(d)) >= target:
            break
        if rng.random() < 0.2:
            d["resolution"] = mx["resolution"]
        else:
            i = int(rng.integers(len(d["stages"])))
            k = str(rng.choice(sorted(d["stages"][i])))
            d["stages"][i][k] = mx["stages"][i][k]
    a = ArchConfig.from_dict(d)
    return a if space.contains(a) else arch

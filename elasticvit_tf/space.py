"""Search spaces as data: one frozen dataclass with per-stage rows, plus presets.

Presets:
  * ``elasticvit``: the official ElasticViT space exactly (docs/method.md#search-space,
    docs/method.md#flops-levels).
  * ``demo``: the same six-stage structure and every elastic dimension, sized for Fashion-MNIST
    (28x28 grey images tiled to 3 channels) on 2 CPU cores.
  * ``tiny``: the same structure at toy size, for unit tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from elasticvit_tf import arch as arch_lib
from elasticvit_tf.arch import ArchConfig, StageArch, StemArch


@dataclasses.dataclass(frozen=True)
class StemSpace:
    """First conv (3x3, stride 2) and the depthwise-separable stem blocks."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class StageSpace:
    """One stage row. kind "C" = MBConv stage, "T" = transformer stage."""

    kind: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    downsample: bool
    se: bool = False
    expand_ratios: tuple[int, ...] = ()
    kernels: tuple[int, ...] = ()
    mlp_ratios: tuple[int, ...] = ()
    v_scales: tuple[int, ...] = ()

    @property
    def is_transformer(self) -> bool:
        return self.kind == "T"

    @property
    def max_width(self) -> int:
        return max(self.widths)

    @property
    def max_depth(self) -> int:
        return max(self.depths)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A hybrid conv + transformer search space (ElasticViT macro layout)."""

    name: str
    resolutions: tuple[int, ...]
    stem: StemSpace
    stages: tuple[StageSpace, ...]
    head_dim: int = 16
    head_mul: int = 6  # head expands C5 -> head_mul * C5 per token
    head_width: int = 1984  # pre-classifier width
    num_classes: int = 1000  # classes used for FLOPs accounting (the supernet's own may differ)
    transition_expand: int = 6  # expansion of the transition MBConv of every transformer stage
    transition_kernel: int = 3
    flops_levels: tuple[float, ...] = ()
    level_bound: float = 10.0  # a level's bin is [F, F + 2 * level_bound]
    min_archs: tuple[tuple[float, ArchConfig], ...] = ()  # (key, arch), keys ascending

    def __post_init__(self):
        _validate_space(self)

    # ------------------------------------------------------------------------------- basics
    @property
    def stage_kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.stages)

    @property
    def max_resolution(self) -> int:
        return max(self.resolutions)

    def feature_sides(self, resolution: int) -> tuple[int, ...]:
        """Side after the first conv, then after each stage (ceil division on downsampling)."""
        side = math.ceil(resolution / 2)
        sides = [side]
        for st in self.stages:
            if st.downsample:
                side = math.ceil(side / 2)
            sides.append(side)
        return tuple(sides)

    def max_feature_side(self, stage_index: int) -> int:
        """Largest feature side a stage can have (the relative-position table size R)."""
        return max(self.feature_sides(r)[stage_index + 1] for r in self.resolutions)

    def fingerprint(self) -> str:
        """Hash of the full definition: checkpoints and LUTs record it and readers compare it."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["min_archs"] = [[k, a.to_dict()] for k, a in self.min_archs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"space: unknown field(s) {unknown}; expected {sorted(known)}")
        d["stem"] = StemSpace(**{k: tuple(v) for k, v in d["stem"].items()})
        d["stages"] = tuple(
            StageSpace(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in s.items()})
            for s in d["stages"]
        )
        d["resolutions"] = tuple(d["resolutions"])
        d["flops_levels"] = tuple(d.get("flops_levels", ()))
        d["min_archs"] = tuple((k, ArchConfig.from_dict(a)) for k, a in d.get("min_archs", ()))
        return cls(**d)

    # ---------------------------------------------------------------------------- archs
    def validate_arch(self, arch: ArchConfig) -> None:
        """Raises ``ValueError`` naming the field, the value and what was expected."""
        if not isinstance(arch, ArchConfig):
            raise ValueError(f"arch: expected an ArchConfig, got {type(arch).__name__}")
        sp = self.name
        if arch.resolution not in self.resolutions:
            raise ValueError(
                f"arch.resolution={arch.resolution} is not in space '{sp}': expected "
                f"one of {list(self.resolutions)}"
            )
        for field, choices in (
            ("width", self.stem.widths),
            ("depth", self.stem.depths),
            ("kernel", self.stem.kernels),
        ):
            v = getattr(arch.stem, field)
            if v not in choices:
                raise ValueError(
                    f"arch.stem.{field}={v} is not in space '{sp}': expected one of "
                    f"{list(choices)}"
                )
        if len(arch.stages) != len(self.stages):
            raise ValueError(
                f"arch has {len(arch.stages)} stages; space '{sp}' has " f"{len(self.stages)}"
            )
        prev = arch.stem.width
        for i, (a, s) in enumerate(zip(arch.stages, self.stages)):
            where = f"arch.stages[{i}]"
            if a.is_transformer != s.is_transformer:
                want = (
                    "mlp_ratio/v_scale (transformer)"
                    if s.is_transformer
                    else "expand_ratio/kernel (conv)"
                )
                raise ValueError(f"{where}: stage kind mismatch; expected {want} fields")
            checks = [("width", s.widths), ("depth", s.depths)]
            if s.is_transformer:
                checks += [("mlp_ratio", s.mlp_ratios), ("v_scale", s.v_scales)]
            else:
                checks += [("expand_ratio", s.expand_ratios), ("kernel", s.kernels)]
            for field, choices in checks:
                v = getattr(a, field)
                if v not in choices:
                    raise ValueError(
                        f"{where}.{field}={v} is not in space '{sp}': expected one of "
                        f"{list(choices)}"
                    )
            if a.width < prev:
                raise ValueError(
                    f"{where}.width={a.width} is smaller than the previous width {prev}: "
                    "widths must be non-decreasing (stem <= stage 0 <= ... <= stage 5)"
                )
            prev = a.width

    def contains(self, arch: ArchConfig) -> bool:
        try:
            self.validate_arch(arch)
        except ValueError:
            return False
        return True

    def min_arch(self) -> ArchConfig:
        """Every choice at its smallest value."""
        return self._extreme_arch(min)

    def max_arch(self) -> ArchConfig:
        """Every choice at its largest value."""
        return self._extreme_arch(max)

    def _extreme_arch(self, pick) -> ArchConfig:
        stages = []
        for s in self.stages:
            if s.is_transformer:
                knobs = dict(mlp_ratio=pick(s.mlp_ratios), v_scale=pick(s.v_scales))
            else:
                knobs = dict(expand_ratio=pick(s.expand_ratios), kernel=pick(s.kernels))
            stages.append(StageArch(pick(s.widths), pick(s.depths), **knobs))
        stem = StemArch(pick(self.stem.widths), pick(self.stem.depths), pick(self.stem.kernels))
        return ArchConfig(pick(self.resolutions), stem, tuple(stages))

    def sample(self, rng: np.random.Generator, min_arch: Optional[ArchConfig] = None) -> ArchConfig:
        """Uniform block-wise sample with non-decreasing widths
        (docs/method.md#complexity-aware-sampling).

        With ``min_arch`` the space is restricted to archs that dominate it
        (docs/method.md#flops-level-tables step 2):
        resolution, stem width/depth, per-stage width/depth, expansion, MLP ratio and V scale at
        least the min arch's. Unlike the official sampler the MLP bound is applied and kernels are
        not filtered by the expansion ratio (docs/method.md#bugs-fixed, fixed).
        """

        def pick(choices):
            return choices[int(rng.integers(len(choices)))]

        def at_least(choices, lo):
            return [c for c in choices if c >= lo] if lo is not None else list(choices)

        m = min_arch
        res = pick(at_least(self.resolutions, m and m.resolution))
        c0 = pick(at_least(self.stem.widths, m and m.stem.width))
        d0 = pick(at_least(self.stem.depths, m and m.stem.depth))
        k0 = pick(list(self.stem.kernels))
        prev = c0
        stages = []
        for i, s in enumerate(self.stages):
            ms = m.stages[i] if m is not None else None
            depth = pick(at_least(s.depths, ms and ms.depth))
            lo = max(prev, ms.width) if ms is not None else prev
            width = pick(at_least(s.widths, lo))
            if s.is_transformer:
                stages.append(
                    StageArch(
                        width,
                        depth,
                        mlp_ratio=pick(at_least(s.mlp_ratios, ms and ms.mlp_ratio)),
                        v_scale=pick(at_least(s.v_scales, ms and ms.v_scale)),
                    )
                )
            else:
                stages.append(
                    StageArch(
                        width,
                        depth,
                        expand_ratio=pick(at_least(s.expand_ratios, ms and ms.expand_ratio)),
                        kernel=pick(list(s.kernels)),
                    )
                )
            prev = width
        return ArchConfig(res, StemArch(c0, d0, k0), tuple(stages))

    # ---------------------------------------------------------------------- FLOPs levels
    def level_bin(self, level: float) -> tuple[float, float]:
        return (level, level + 2 * self.level_bound)

    def select_min_arch(self, level: float) -> ArchConfig:
        """Per-level min subnet (docs/method.md#level-bins-and-min-subnets): first key u with
        prev + 2b < F <= u + 2b."""
        if not self.min_archs:
            return self.min_arch()
        b2 = 2 * self.level_bound
        prev = 0.0
        for key, a in self.min_archs:
            if prev + b2 < level <= key + b2:
                return a
            prev = key
        return self.min_archs[-1][1]

    # --------------------------------------------------------------- official encoding
    def from_official(self, encoding: Sequence[Any]) -> ArchConfig:
        a = arch_lib.from_official(encoding, self.stage_kinds)
        self.validate_arch(a)
        return a

    def to_official(self, arch: ArchConfig) -> list:
        return arch_lib.to_official(arch, self.head_dim)


# ------------------------------------------------------------------------- validation
def _validate_space(sp: SearchSpace) -> None:
    def err(field, value, expected):
        raise ValueError(f"space '{sp.name}': {field}={value!r} is invalid; expected {expected}")

    def grid(field, values, positive=True):
        if not isinstance(values, tuple) or not values:
            err(field, values, "a non-empty tuple of ints")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or (positive and v <= 0):
                err(field, values, "positive integers")
        if list(values) != sorted(set(values)):
            err(field, values, "strictly increasing values")

    for name in ("head_dim", "head_mul", "head_width", "num_classes", "transition_expand"):
        v = getattr(sp, name)
        if not isinstance(v, int) or v <= 0:
            err(name, v, "a positive integer")
    grid("resolutions", sp.resolutions)
    grid("stem.widths", sp.stem.widths)
    grid("stem.depths", sp.stem.depths)
    grid("stem.kernels", sp.stem.kernels)
    for k in sp.stem.kernels:
        if k % 2 == 0:
            err("stem.kernels", sp.stem.kernels, "odd kernel sizes")
    if not sp.stages:
        err("stages", sp.stages, "at least one stage")
    seen_t = False
    prev_max, prev_min = max(sp.stem.widths), min(sp.stem.widths)
    for i, s in enumerate(sp.stages):
        f = f"stages[{i}]"
        if s.kind not in ("C", "T"):
            err(f"{f}.kind", s.kind, "'C' (MBConv) or 'T' (transformer)")
        if s.kind == "C" and seen_t:
            err(f"{f}.kind", s.kind, "conv stages before all transformer stages")
        seen_t = seen_t or s.kind == "T"
        grid(f"{f}.widths", s.widths)
        grid(f"{f}.depths", s.depths)
        if s.kind == "C":
            grid(f"{f}.expand_ratios", s.expand_ratios)
            grid(f"{f}.kernels", s.kernels)
            if any(k % 2 == 0 for k in s.kernels):
                err(f"{f}.kernels", s.kernels, "odd kernel sizes")
            if s.mlp_ratios or s.v_scales:
                err(
                    f"{f}.mlp_ratios/v_scales", (s.mlp_ratios, s.v_scales), "empty for a conv stage"
                )
        else:
            grid(f"{f}.mlp_ratios", s.mlp_ratios)
            grid(f"{f}.v_scales", s.v_scales)
            if s.expand_ratios or s.kernels:
                err(
                    f"{f}.expand_ratios/kernels",
                    (s.expand_ratios, s.kernels),
                    "empty for a transformer stage",
                )
            for w in s.widths:
                if w % sp.head_dim:
                    err(f"{f}.widths", s.widths, f"multiples of head_dim={sp.head_dim}")
        if max(s.widths) < prev_max:
            err(
                f"{f}.widths",
                s.widths,
                f"a max width >= the previous stage's max {prev_max} "
                "(widths are non-decreasing)",
            )
        if min(s.widths) < prev_min:
            err(f"{f}.widths", s.widths, f"a min width >= the previous stage's min {prev_min}")
        prev_max, prev_min = max(s.widths), min(s.widths)
    if not sp.stages[0].kind == "C" or sp.stages[-1].kind != "T":
        err("stages", sp.stage_kinds, "conv stage(s) first and a transformer stage last")
    if list(sp.flops_levels) != sorted(set(sp.flops_levels)):
        err("flops_levels", sp.flops_levels, "strictly increasing")
    if sp.level_bound <= 0:
        err("level_bound", sp.level_bound, "> 0")
    keys = [k for k, _ in sp.min_archs]
    if keys != sorted(set(keys)):
        err("min_archs", keys, "strictly increasing keys")
    last_side = sp.feature_sides(min(sp.resolutions))[-1]
    if last_side < 2:
        err(
            "resolutions/downsample",
            (sp.resolutions, [s.downsample for s in sp.stages]),
            "at least 2x2 tokens in the last stage at the smallest resolution",
        )
    for key, a in sp.min_archs:
        try:
            sp.validate_arch(a)
        except ValueError as e:
            raise ValueError(
                f"space '{sp.name}': min_archs[{key}] is not in the space: {e}"
            ) from None


# ---------------------------------------------------------------------------- presets
def _elasticvit() -> SearchSpace:
    conv = dict(kind="C", expand_ratios=(3, 4, 5, 6), kernels=(3, 5), downsample=True)
    tr = dict(kind="T", mlp_ratios=(2, 3, 4, 5), v_scales=(2, 3, 4))
    base = SearchSpace(
        name="elasticvit",
        resolutions=(128, 160, 176, 192, 224, 256),
        stem=StemSpace(widths=(16, 24), depths=(1, 2), kernels=(3, 5)),
        stages=(
            StageSpace(widths=(16, 24, 32), depths=(2, 3, 4, 5), se=False, **conv),
            StageSpace(widths=(16, 24, 32, 40, 48), depths=(2, 3, 4, 5, 6), se=True, **conv),
            StageSpace(widths=(48, 64, 80, 96), depths=(1, 2, 3, 4, 5), downsample=True, **tr),
            StageSpace(
                widths=tuple(range(80, 161, 16)), depths=tuple(range(1, 7)), downsample=False, **tr
            ),
            StageSpace(
                widths=tuple(range(144, 289, 16)), depths=tuple(range(1, 7)), downsample=True, **tr
            ),
            StageSpace(
                widths=tuple(range(160, 321, 16)), depths=tuple(range(1, 7)), downsample=True, **tr
            ),
        ),
        head_dim=16,
        head_mul=6,
        head_width=1984,
        num_classes=1000,
        flops_levels=(100, 200, 300, 400, 500, 700, 900, 1200),
        level_bound=10.0,
    )
    return _with_min_archs(base, sorted(arch_lib.OFFICIAL_MIN_ARCH_ENCODINGS.items()))


def _with_min_archs(base: SearchSpace, encodings) -> SearchSpace:
    """Attaches per-level min archs given as (key, official encoding) pairs."""
    mins = tuple((float(k), arch_lib.from_official(enc, base.stage_kinds)) for k, enc in encodings)
    return dataclasses.replace(base, min_archs=mins)


def _demo() -> SearchSpace:
    # Fashion-MNIST (28x28): first conv /2, stage 0 keeps the side, stages 1, 2, 4 halve it, so
    # r=24 ends with a 2x2 token map and r=32 with 2x2 as well (ceil division).
    conv = dict(kind="C", expand_ratios=(2, 3, 4), kernels=(3, 5))
    tr = dict(kind="T", mlp_ratios=(1, 2, 3), v_scales=(1, 2))
    base = SearchSpace(
        name="demo",
        resolutions=(24, 28, 32),
        stem=StemSpace(widths=(8, 16), depths=(1, 2), kernels=(3, 5)),
        stages=(
            StageSpace(widths=(16, 24), depths=(1, 2), downsample=False, se=False, **conv),
            StageSpace(widths=(16, 24, 32), depths=(1, 2), downsample=True, se=True, **conv),
            StageSpace(widths=(32, 48), depths=(1, 2), downsample=True, **tr),
            StageSpace(widths=(32, 48, 64), depths=(1, 2), downsample=False, **tr),
            StageSpace(widths=(48, 64, 80), depths=(1, 2), downsample=True, **tr),
            StageSpace(widths=(64, 80, 96), depths=(1, 2), downsample=False, **tr),
        ),
        head_dim=16,
        head_mul=4,
        head_width=256,
        num_classes=10,
        level_bound=DEMO_LEVEL_BOUND,
        flops_levels=DEMO_FLOPS_LEVELS,
    )
    return _with_min_archs(base, DEMO_MIN_ARCH_ENCODINGS)


def _tiny() -> SearchSpace:
    conv = dict(kind="C", expand_ratios=(1, 2), kernels=(3, 5))
    tr = dict(kind="T", mlp_ratios=(1, 2), v_scales=(1, 2))
    base = SearchSpace(
        name="tiny",
        resolutions=(16, 24),
        stem=StemSpace(widths=(4, 8), depths=(1, 2), kernels=(3, 5)),
        stages=(
            StageSpace(widths=(8,), depths=(1, 2), downsample=False, se=False, **conv),
            StageSpace(widths=(8, 16), depths=(1, 2), downsample=True, se=True, **conv),
            StageSpace(widths=(16,), depths=(1, 2), downsample=False, **tr),
            StageSpace(widths=(16, 32), depths=(1, 2), downsample=False, **tr),
            StageSpace(widths=(32,), depths=(1, 2), downsample=True, **tr),
            StageSpace(widths=(32, 48), depths=(1, 2), downsample=False, **tr),
        ),
        head_dim=16,
        head_mul=2,
        head_width=32,
        num_classes=10,
        level_bound=TINY_LEVEL_BOUND,
        flops_levels=TINY_FLOPS_LEVELS,
    )
    return _with_min_archs(base, TINY_MIN_ARCH_ENCODINGS)


# Derived once for the small presets from 20k uniform samples of each space (FLOPs range and
# percentiles) and written out as literals: levels span the p5..p95 range; min archs are the
# global min arch, the min arch at the middle resolution and a "one grid step up" arch at the
# largest resolution, keyed so that select_min_arch() maps low/middle/high levels to them.
# Encodings use the official 10-list import format (docs/formats.md#official-10-list).
# fmt: off
DEMO_LEVEL_BOUND = 0.2  # bins [F, F + 0.4] MFLOPs (range 1.15 .. 11.46, median 4.4)
DEMO_FLOPS_LEVELS: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0, 7.5)
DEMO_MIN_ARCH_ENCODINGS: tuple[tuple[float, list], ...] = (
    (2.0, [24, [8, 16, 16, 32, 32, 48, 64], [1] * 7, [1, 2, 2], [3] * 3, [1] * 4, [2, 2, 3, 4], [1] * 4, [1] * 4, [1] * 4]),  # 1.15 MFLOPs  # noqa: E501
    (4.0, [28, [8, 16, 16, 32, 32, 48, 64], [1] * 7, [1, 2, 2], [3] * 3, [1] * 4, [2, 2, 3, 4], [1] * 4, [1] * 4, [1] * 4]),  # 1.51 MFLOPs  # noqa: E501
    (6.0, [32, [8, 24, 24, 48, 48, 64, 80], [1] * 7, [1, 2, 2], [3] * 3, [1] * 4, [3, 3, 4, 5], [1] * 4, [1] * 4, [1] * 4]),  # 3.01 MFLOPs  # noqa: E501
)
TINY_LEVEL_BOUND = 0.05  # bins [F, F + 0.1] MFLOPs (range 0.34 .. 3.19, median 1.06)
TINY_FLOPS_LEVELS: tuple[float, ...] = (0.5, 0.9, 1.2, 1.6, 2.0)
TINY_MIN_ARCH_ENCODINGS: tuple[tuple[float, list], ...] = (
    (0.5, [16, [4, 8, 8, 16, 16, 32, 32], [1] * 7, [1, 1, 1], [3] * 3, [1] * 4, [1, 1, 2, 2], [1] * 4, [1] * 4, [1] * 4]),  # 0.34 MFLOPs  # noqa: E501
    (1.1, [24, [4, 8, 8, 16, 16, 32, 32], [1] * 7, [1, 1, 1], [3] * 3, [1] * 4, [1, 1, 2, 2], [1] * 4, [1] * 4, [1] * 4]),  # 0.81 MFLOPs  # noqa: E501
    (2.0, [24, [4, 8, 16, 16, 32, 32, 48], [1] * 7, [1, 1, 1], [3] * 3, [1] * 4, [1, 2, 2, 3], [1] * 4, [1] * 4, [1] * 4]),  # 1.49 MFLOPs  # noqa: E501
)
# fmt: on

_PRESETS = {"elasticvit": _elasticvit, "demo": _demo, "tiny": _tiny}
_CACHE: dict[str, SearchSpace] = {}


def space_names() -> tuple[str, ...]:
    return tuple(_PRESETS)


def get_space(name: str) -> SearchSpace:
    """Returns a preset space by name: 'elasticvit', 'demo' or 'tiny'."""
    if name not in _PRESETS:
        raise ValueError(f"unknown space {name!r}; expected one of {sorted(_PRESETS)}")
    if name not in _CACHE:
        _CACHE[name] = _PRESETS[name]()
    return _CACHE[name]


def get_published_arch(name: str) -> ArchConfig:
    """A published ElasticViT model (elastic_T1 ... elastic_L3) as an ArchConfig."""
    if name not in arch_lib.OFFICIAL_ENCODINGS:
        raise ValueError(
            f"unknown model {name!r}; expected one of " f"{list(arch_lib.PUBLISHED_MODEL_NAMES)}"
        )
    return get_space("elasticvit").from_official(arch_lib.OFFICIAL_ENCODINGS[name])


def arch_from_json(
    data: Any, space: Optional[SearchSpace] = None, validate: bool = True
) -> ArchConfig:
    """An arch from parsed arch JSON (docs/formats.md): an ``ArchConfig`` object, a
    ``best_arch_*.json`` wrapper ``{"arch": {...}, "metrics": ...}``, or the official 10-list
    encoding (as the official release and the paper publish archs), which needs ``space``.
    Validated against ``space`` when given (an ``ArchConfig`` object only if ``validate``)."""
    if isinstance(data, dict) and "arch" in data and "resolution" not in data:
        data = data["arch"]
    if isinstance(data, (list, tuple)):
        if space is None:
            raise ValueError(
                "an official 10-list encoding needs a known space; expected an ArchConfig "
                "object (resolution, stem, stages)"
            )
        return space.from_official(data)
    arch = ArchConfig.from_dict(data)
    if space is not None and validate:
        space.validate_arch(arch)
    return arch


def resolve_arch(
    value: str, space: Optional[SearchSpace] = None, validate: bool = True
) -> ArchConfig:
    """The arch a command line names with ``--arch``: ``min``/``max`` of ``space``, a published
    model (elastic_T1 ... elastic_L3), or the path of an arch JSON file in any layout that
    ``arch_from_json`` reads. Validated against ``space`` when given and ``validate``.

    Raises:
        ValueError: one line naming the value and what was expected.
    """
    if value in ("min", "max"):
        if space is None:
            raise ValueError(f"--arch={value} needs a space; expected a published model or a file")
        return space.min_arch() if value == "min" else space.max_arch()
    if value in arch_lib.OFFICIAL_ENCODINGS:
        if space is not None and validate and space.name != "elasticvit":
            raise ValueError(
                f"--arch={value} is a published model of space 'elasticvit', not '{space.name}'"
            )
        return get_published_arch(value)
    if value.endswith(".json") or os.path.sep in value or os.path.exists(value):
        if not os.path.isfile(value):
            raise ValueError(f"--arch={value}: no such file; expected an ArchConfig JSON file")
        with open(value) as f:
            text = f.read()
        data = arch_lib.parse_json(text, f"--arch={value}")
        try:
            return arch_from_json(data, space, validate)
        except ValueError as e:
            raise ValueError(f"--arch={value}: {e}") from None
    raise ValueError(
        f"--arch={value!r} is neither a published model ({', '.join(arch_lib.PUBLISHED_MODEL_NAMES)}"
        "), 'min'/'max', nor a path to an ArchConfig JSON file"
    )

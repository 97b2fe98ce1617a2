"""Architecture configs: one resolved point of a search space.

An ``ArchConfig`` is per stage (block-wise), as the official sampler and every published
ElasticViT model are: resolution; stem width, depth and depthwise kernel; per stage width,
depth and either expansion ratio + kernel (conv stages) or MLP ratio + V scale (transformer
stages). Heads are ``width // head_dim`` and are not stored.

This module also converts to and from the official 10-list encoding
(docs/formats.md#official-10-list) and keeps the project's own copy of the published model
encodings.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional, Sequence

_CONV_FIELDS = ("expand_ratio", "kernel")
_TRANSFORMER_FIELDS = ("mlp_ratio", "v_scale")


@dataclasses.dataclass(frozen=True)
class StemArch:
    """First conv + depthwise-separable stem blocks."""

    width: int
    depth: int
    kernel: int


@dataclasses.dataclass(frozen=True)
class StageArch:
    """One stage. Conv stages set expand_ratio/kernel, transformer stages mlp_ratio/v_scale."""

    width: int
    depth: int
    expand_ratio: Optional[int] = None
    kernel: Optional[int] = None
    mlp_ratio: Optional[int] = None
    v_scale: Optional[int] = None

    @property
    def is_transformer(self) -> bool:
        return self.mlp_ratio is not None

    def key(self) -> str:
        if self.is_transformer:
            return f"t{self.width}.{self.depth}.m{self.mlp_ratio}.v{self.v_scale}"
        return f"c{self.width}.{self.depth}.e{self.expand_ratio}.k{self.kernel}"


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """A subnet: resolution, stem and one ``StageArch`` per stage."""

    resolution: int
    stem: StemArch
    stages: tuple[StageArch, ...]

    def __post_init__(self):
        if not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    def key(self) -> str:
        """Canonical string (for logs, caches and dedupe). Equal keys <=> equal archs."""
        stem = f"s{self.stem.width}.{self.stem.depth}.k{self.stem.kernel}"
        return "-".join([f"r{self.resolution}", stem] + [s.key() for s in self.stages])

    def replace(self, **kwargs) -> "ArchConfig":
        return dataclasses.replace(self, **kwargs)

    def replace_stage(self, index: int, **kwargs) -> "ArchConfig":
        stages = list(self.stages)
        stages[index] = dataclasses.replace(stages[index], **kwargs)
        return dataclasses.replace(self, stages=tuple(stages))

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        stages = []
        for s in self.stages:
            d = {"width": s.width, "depth": s.depth}
            fields = _TRANSFORMER_FIELDS if s.is_transformer else _CONV_FIELDS
            d.update({f: getattr(s, f) for f in fields})
            stages.append(d)
        return {
            "resolution": self.resolution,
            "stem": dataclasses.asdict(self.stem),
            "stages": stages,
        }

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"arch: expected a JSON object, got {type(d).__name__}")
        _check_keys("arch", d, required={"resolution", "stem", "stages"}, optional={"name"})
        stem_d = d["stem"]
        if not isinstance(stem_d, Mapping):
            raise ValueError("arch.stem: expected an object with width, depth, kernel")
        _check_keys("arch.stem", stem_d, required={"width", "depth", "kernel"})
        stem = StemArch(**{k: _as_int(f"arch.stem.{k}", v) for k, v in stem_d.items()})
        if not isinstance(d["stages"], Sequence) or isinstance(d["stages"], (str, bytes)):
            raise ValueError("arch.stages: expected a list of stage objects")
        stages = []
        for i, sd in enumerate(d["stages"]):
            where = f"arch.stages[{i}]"
            if not isinstance(sd, Mapping):
                raise ValueError(f"{where}: expected an object, got {sd!r}")
            if "mlp_ratio" in sd or "v_scale" in sd:
                _check_keys(
                    where,
                    sd,
                    required={"width", "depth", "mlp_ratio", "v_scale"},
                    optional={"heads"},
                )
            else:
                _check_keys(where, sd, required={"width", "depth", "expand_ratio", "kernel"})
            stages.append(
                StageArch(**{k: _as_int(f"{where}.{k}", v) for k, v in sd.items() if k != "heads"})
            )
        return cls(
            resolution=_as_int("arch.resolution", d["resolution"]), stem=stem, stages=tuple(stages)
        )

    @classmethod
    def from_json(cls, text: str) -> "ArchConfig":
        return cls.from_dict(parse_json(text))


def parse_json(text: str, where: str = "arch") -> Any:
    """``json.loads`` of arch JSON text; ValueError naming ``where`` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{where}: malformed JSON ({e.msg} at line {e.lineno}); expected an object with "
            "resolution, stem and stages"
        ) from None


def _as_int(where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise ValueError(f"{where}: expected an integer, got {v!r}")
    return int(v)


def _check_keys(where, d, required, optional=frozenset()):
    missing = sorted(required - set(d))
    unknown = sorted(set(d) - set(required) - set(optional))
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; expected {sorted(required)}")
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected {sorted(required)}")


# ------------------------------------------------------------------ official 10-list encoding
def from_official(encoding: Sequence[Any], stage_kinds: Sequence[str]) -> ArchConfig:
    """Decodes ``[res, channels, depths, conv_ratio, kernel_size, mlp_ratio, num_heads,
    window_size, qk_scale, v_scale]`` (docs/formats.md#official-10-list) into an ``ArchConfig``.

    ``stage_kinds`` is the space's per-stage kind ("C"/"T"). Encodings whose per-layer values
    differ inside a stage are refused, naming the stage (our archs are block-wise).
    """
    if not isinstance(encoding, Sequence) or len(encoding) != 10:
        raise ValueError(
            "official encoding: expected a list of 10 entries [res, channels, depths, "
            "conv_ratio, kernel_size, mlp_ratio, num_heads, window_size, qk_scale, "
            f"v_scale], got {encoding!r:.200}"
        )
    res, chans, depths, ratios, kernels, mlps, _heads, windows, qks, vs = encoding
    n = len(stage_kinds)
    if len(chans) != n + 1 or len(depths) != n + 1:
        raise ValueError(
            f"official encoding: channels and depths need {n + 1} entries "
            f"(stem + {n} stages), got {len(chans)} and {len(depths)}"
        )
    n_conv_layers = depths[0] + sum(d for d, k in zip(depths[1:], stage_kinds) if k == "C")
    n_t_layers = sum(d for d, k in zip(depths[1:], stage_kinds) if k == "T")
    if len(ratios) != n_conv_layers or len(kernels) != n_conv_layers:
        raise ValueError(
            f"official encoding: conv_ratio/kernel_size need {n_conv_layers} entries "
            f"(stem + conv-stage layers), got {len(ratios)}/{len(kernels)}"
        )
    for name, lst in (
        ("mlp_ratio", mlps),
        ("window_size", windows),
        ("qk_scale", qks),
        ("v_scale", vs),
    ):
        if len(lst) != n_t_layers:
            raise ValueError(
                f"official encoding: {name} needs {n_t_layers} entries (one per "
                f"transformer layer), got {len(lst)}"
            )
    if any(w != 1 for w in windows) or any(q != 1 for q in qks):
        raise ValueError(
            "official encoding: window_size and qk_scale must be 1 (global attention, "
            "QK scale 1 are the only values of the space)"
        )

    def uniform(where, values):
        if len(set(values)) > 1:
            raise ValueError(
                f"official encoding: {where} has per-layer values {list(values)} that "
                "differ inside the stage; only block-wise archs (one value per stage) are "
                "supported"
            )
        return int(values[0])

    stem = StemArch(
        width=int(chans[0]),
        depth=int(depths[0]),
        kernel=uniform("stem kernel_size", kernels[: depths[0]]),
    )
    ci, ti = depths[0], 0
    stages = []
    for i, kind in enumerate(stage_kinds):
        d = int(depths[i + 1])
        if d < 1:
            raise ValueError(f"official encoding: stage {i} depth {d} must be >= 1")
        if kind == "C":
            e = uniform(f"stage {i} conv_ratio", ratios[ci : ci + d])
            k = uniform(f"stage {i} kernel_size", kernels[ci : ci + d])
            stages.append(StageArch(int(chans[i + 1]), d, expand_ratio=e, kernel=k))
            ci += d
        else:
            m = uniform(f"stage {i} mlp_ratio", mlps[ti : ti + d])
            v = uniform(f"stage {i} v_scale", vs[ti : ti + d])
            stages.append(StageArch(int(chans[i + 1]), d, mlp_ratio=m, v_scale=v))
            ti += d
    return ArchConfig(resolution=int(res), stem=stem, stages=tuple(stages))


def to_official(arch: ArchConfig, head_dim: int = 16) -> list:
    """Encodes an ``ArchConfig`` as the official 10-list (per-layer lists)."""
    ratios = [1] * arch.stem.depth
    kernels = [arch.stem.kernel] * arch.stem.depth
    mlps, heads, windows, qks, vs = [], [], [], [], []
    for s in arch.stages:
        if s.is_transformer:
            mlps += [s.mlp_ratio] * s.depth
            heads += [s.width // head_dim] * s.depth
            windows += [1] * s.depth
            qks += [1] * s.depth
            vs += [s.v_scale] * s.depth
        else:
            ratios += [s.expand_ratio] * s.depth
            kernels += [s.kernel] * s.depth
    return [
        arch.resolution,
        [arch.stem.width] + [s.width for s in arch.stages],
        [arch.stem.depth] + [s.depth for s in arch.stages],
        ratios,
        kernels,
        mlps,
        heads,
        windows,
        qks,
        vs,
    ]


# ------------------------------------------------------------------------ published models
# The project's own copy of the official encodings (configs/final_3min_space_eval.yaml and the
# training min archs of configs/final_3min_space.yaml), docs/method.md#published-models,
# docs/method.md#level-bins-and-min-subnets.
OFFICIAL_ENCODINGS: dict[str, list] = {
    "elastic_T1": [
        128,
        [16, 24, 32, 64, 96, 176, 272],
        [1, 2, 3, 1, 1, 1, 1],
        [1, 3, 3, 3, 3, 3],
        [3, 3, 3, 3, 3, 3],
        [2, 2, 3, 4],
        [4, 6, 11, 17],
        [1] * 4,
        [1] * 4,
        [2] * 4,
    ],
    "elastic_T2": [
        160,
        [16, 24, 40, 48, 96, 176, 256],
        [1, 2, 3, 1, 1, 2, 2],
        [1, 3, 3, 3, 3, 3],
        [3, 3, 3, 3, 3, 3],
        [3, 4, 3, 3, 2, 2],
        [3, 6, 11, 11, 16, 16],
        [1] * 6,
        [1] * 6,
        [2] * 6,
    ],
    "elastic_S1": [
        192,
        [16, 24, 40, 64, 96, 192, 272],
        [1, 3, 3, 2, 2, 2, 2],
        [1, 3, 3, 3, 3, 3, 3],
        [3, 3, 3, 3, 3, 3, 3],
        [2, 2, 2, 2, 3, 3, 4, 4],
        [4, 4, 6, 6, 12, 12, 17, 17],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
    "elastic_S2": [
        224,
        [16, 24, 48, 64, 96, 192, 256],
        [1, 3, 3, 2, 2, 2, 2],
        [1, 3, 3, 3, 3, 3, 3],
        [3, 3, 3, 3, 3, 3, 3],
        [2, 2, 2, 2, 2, 2, 4, 4],
        [4, 4, 6, 6, 12, 12, 16, 16],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
    "elastic_M": [
        224,
        [16, 32, 48, 64, 96, 192, 288],
        [1, 3, 5, 2, 2, 2, 2],
        [1, 3, 3, 3, 3, 3, 3, 3, 3],
        [5, 3, 3, 3, 3, 3, 3, 3, 3],
        [2, 2, 4, 4, 4, 4, 5, 5],
        [4, 4, 6, 6, 12, 12, 18, 18],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
    "elastic_L1": [
        256,
        [16, 24, 40, 64, 96, 192, 320],
        [1, 3, 3, 2, 2, 2, 2],
        [1, 3, 3, 3, 6, 6, 6],
        [5, 5, 5, 5, 5, 5, 5],
        [4, 4, 3, 3, 4, 4, 4, 4],
        [4, 4, 6, 6, 12, 12, 20, 20],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
    "elastic_L1.5": [
        256,
        [16, 24, 48, 64, 96, 256, 320],
        [2, 4, 4, 2, 2, 2, 2],
        [1, 1, 3, 3, 3, 3, 4, 4, 4, 4],
        [3, 3, 3, 3, 3, 3, 5, 5, 5, 5],
        [4, 4, 5, 5, 3, 3, 5, 5],
        [4, 4, 6, 6, 16, 16, 20, 20],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
    "elastic_L2": [
        256,
        [16, 24, 40, 80, 128, 256, 304],
        [1, 3, 4, 2, 2, 2, 2],
        [1, 6, 6, 6, 6, 6, 6, 6],
        [3, 3, 3, 3, 3, 3, 3, 3],
        [3, 3, 2, 2, 3, 3, 5, 5],
        [5, 5, 8, 8, 16, 16, 19, 19],
        [1] * 8,
        [1] * 8,
        [2, 2, 2, 2, 2, 2, 3, 3],
    ],
    "elastic_L3": [
        256,
        [16, 32, 48, 80, 128, 256, 320],
        [1, 3, 4, 2, 2, 2, 2],
        [1, 5, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 5, 5, 5, 5],
        [4, 4, 4, 4, 3, 3, 5, 5],
        [5, 5, 8, 8, 16, 16, 20, 20],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
}

# Training "min" subnets per FLOPs-level key (yaml `min_archs`,
# docs/method.md#level-bins-and-min-subnets).
OFFICIAL_MIN_ARCH_ENCODINGS: dict[int, list] = {
    200: [
        128,
        [16, 16, 16, 48, 80, 144, 160],
        [1, 2, 2, 1, 1, 1, 1],
        [1, 3, 3, 3, 3],
        [3, 3, 3, 3, 3],
        [2, 2, 2, 2],
        [3, 5, 9, 10],
        [1] * 4,
        [1] * 4,
        [2] * 4,
    ],
    400: [
        176,
        [16, 24, 32, 48, 96, 176, 224],
        [1, 3, 3, 2, 2, 2, 2],
        [1, 3, 3, 3, 3, 3, 3],
        [3, 3, 3, 3, 3, 3, 3],
        [2, 2, 3, 3, 2, 2, 2, 2],
        [3, 3, 6, 6, 11, 11, 14, 14],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
    800: [
        224,
        [16, 24, 32, 64, 96, 192, 256],
        [1, 3, 3, 2, 2, 2, 2],
        [1, 3, 3, 3, 3, 3, 3],
        [3, 3, 3, 3, 3, 3, 3],
        [2, 2, 2, 2, 2, 2, 2, 2],
        [4, 4, 6, 6, 12, 12, 16, 16],
        [1] * 8,
        [1] * 8,
        [2] * 8,
    ],
}

PUBLISHED_MODEL_NAMES = tuple(OFFICIAL_ENCODINGS)

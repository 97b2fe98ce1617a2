"""The block plan of an architecture: its typed blocks, its array encoding, its MACs and params.

One owner for what the network is made of (docs/method.md#blocks), read by the FLOPs and
parameter counts (``flops.py``), the FLOPs-level tables (``sampling/level_tables.py``), the supernet's
arch variable (``supernet.py``), subnet extraction (``extract.py``), the LUT block models
(``export/lut_blocks.py``) and the latency LUT (``lut.py``). Pure Python and NumPy; nothing
here builds a model.

* **Plan**: ``plan(space, arch)`` lists the blocks of an arch in execution order: first conv,
  ``stem.depth`` stem blocks, one MBConv per conv-stage layer, per transformer stage a
  transition MBConv followed by ``depth`` transformer layers (attention + FFN), then the head.
  Each block is a ``BlockSpec``: a frozen dataclass with named fields, hashable, JSON
  round-trippable (never a joined string), so equal blocks have equal specs.
  ``placed_plan`` adds where each block sits in the supernet (its layer name, stage, index).
* **Encoding** (one int32 row per arch, docs/design.md#one-traced-graph): ``[resolution, stem
  width, stem depth, stem kernel]`` then per stage ``[width, depth, a, b]`` with (a, b) =
  (expand_ratio, kernel) for conv stages and (mlp_ratio, v_scale) for transformer stages.
* **Formulas**: the official FLOPs formula (docs/method.md#flops, quirks included) and the
  standalone subnet's parameter count, per part; every function broadcasts over NumPy integer
  arrays (one value per arch) as well as plain ints, so one formula serves one arch and a
  million encoded rows. ``block_features`` are the latency regressors' inputs: the work a block
  really executes (shortcut only when present, SE included), not the official formula.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from elasticvit_tf.arch import ArchConfig, StageArch, StemArch
from elasticvit_tf.space import SearchSpace


class BlockKind(str, enum.Enum):
    """Block types; each gets its own fitted latency model."""

    FIRST_CONV = "first_conv"  # 3x3 stride-2 conv 3 -> C0, BN, Hardswish
    STEM_BLOCK = "stem_block"  # DW k, BN, Hswish, PW C0 -> C0, BN, identity residual
    MBCONV = "mbconv"  # conv-stage MBConv (optional SE), shortcut rule of docs/method.md#mbconv
    TRANSITION = "transition"  # tokens -> map, MBConv (e=6, k=3, SE), map -> tokens
    TRANSFORMER = "transformer"  # attention + FFN pair on tokens (pre-norm)
    HEAD = "head"  # token-wise linear, BN, Hswish, mean, linear, Hswish, classifier


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Everything that determines one block's shape (and so its latency).

    Fields a kind does not use stay 0 / False, so equal blocks have equal signatures.

    Attributes:
        kind: the block type.
        input_side: side of the square input map (tokens: sqrt of the token count).
        in_channels: input width (3 for the first conv).
        out_channels: output width.
        stride: 1 or 2 (first conv, MBConv, transition).
        kernel: depthwise kernel (stem block, MBConv, transition).
        expand_ratio: MBConv / transition expansion, relative to ``in_channels``.
        se: squeeze-and-excitation in the MBConv / transition.
        mlp_ratio: transformer FFN ratio.
        v_scale: transformer V scale (per-head V dim 16 * v_scale).
        head_dim: per-head q/k dim (heads = out_channels // head_dim).
        hidden: head: token-wise expansion width (head_mul * C5).
        head_width: head: pre-classifier width.
        num_classes: head: classifier outputs.
    """

    kind: BlockKind
    input_side: int
    in_channels: int
    out_channels: int
    stride: int = 1
    kernel: int = 0
    expand_ratio: int = 0
    se: bool = False
    mlp_ratio: int = 0
    v_scale: int = 0
    head_dim: int = 0
    hidden: int = 0
    head_width: int = 0
    num_classes: int = 0

    def __post_init__(self):
        if not isinstance(self.kind, BlockKind):
            try:
                object.__setattr__(self, "kind", BlockKind(self.kind))
            except ValueError:
                raise ValueError(
                    f"op.kind={self.kind!r}: expected one of {[k.value for k in BlockKind]}"
                ) from None

    @property
    def output_side(self) -> int:
        return math.ceil(self.input_side / self.stride)

    @property
    def heads(self) -> int:
        return self.out_channels // self.head_dim if self.head_dim else 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlockSpec":
        if not isinstance(d, Mapping):
            raise ValueError(f"op: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        missing = sorted({"kind", "input_side", "in_channels", "out_channels"} - set(d))
        if unknown or missing:
            raise ValueError(
                f"op: unknown field(s) {unknown}, missing field(s) {missing}; expected fields "
                f"{sorted(known)}"
            )
        kw = {}
        for k, v in d.items():
            if k == "kind":
                kw[k] = v
            elif k == "se":
                kw[k] = bool(v)
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
                    raise ValueError(f"op.{k}={v!r}: expected an integer")
                kw[k] = int(v)
        return cls(**kw)


# ------------------------------------------------------------------------------------ plan
@dataclasses.dataclass(frozen=True)
class PlacedBlock:
    """A block of the plan and where it sits in the supernet and the extracted subnet.

    Attributes:
        name: the layer-name prefix (``first_conv``, ``stem_block{j}``, ``stage{i}_block{j}``,
            ``stage{i}_layer{j}``, ``head``); a transition shares ``stage{i}_layer0``, whose
            first part it is.
        stage: the stage index (None for the first conv, the stem blocks and the head).
        index: the block's index in its stage (or among the stem blocks); 0 otherwise.
        spec: the block's shape.
    """

    name: str
    stage: Optional[int]
    index: int
    spec: BlockSpec


# One constructor per block kind, shared by ``placed_plan`` and ``enumerate_blocks``.
def _first_conv(resolution: int, c0: int) -> BlockSpec:
    return BlockSpec(BlockKind.FIRST_CONV, resolution, 3, c0, stride=2, kernel=3)


def _stem_block(side: int, c0: int, kernel: int) -> BlockSpec:
    return BlockSpec(BlockKind.STEM_BLOCK, side, c0, c0, kernel=kernel)


def _mbconv(side: int, cin: int, c: int, stride: int, kernel: int, e: int, se: bool):
    return BlockSpec(BlockKind.MBCONV, side, cin, c, stride, kernel, e, se)


def _transition(space: SearchSpace, side: int, cin: int, c: int, stride: int) -> BlockSpec:
    e, k = space.transition_expand, space.transition_kernel
    return BlockSpec(BlockKind.TRANSITION, side, cin, c, stride, k, e, se=True)


def _transformer(space: SearchSpace, side: int, c: int, mlp_ratio: int, v_scale: int):
    return BlockSpec(
        BlockKind.TRANSFORMER,
        side,
        c,
        c,
        mlp_ratio=mlp_ratio,
        v_scale=v_scale,
        head_dim=space.head_dim,
    )


def _head(space: SearchSpace, side: int, c5: int) -> BlockSpec:
    return BlockSpec(
        BlockKind.HEAD,
        side,
        c5,
        space.num_classes,
        hidden=space.head_mul * c5,
        head_width=space.head_width,
        num_classes=space.num_classes,
    )


def placed_plan(space: SearchSpace, arch: ArchConfig) -> list[PlacedBlock]:
    """The blocks of ``arch`` in execution order, placed (validates the arch first)."""
    space.validate_arch(arch)
    sides = space.feature_sides(arch.resolution)
    c0 = arch.stem.width
    out = [PlacedBlock("first_conv", None, 0, _first_conv(arch.resolution, c0))]
    stem = _stem_block(sides[0], c0, arch.stem.kernel)
    out += [PlacedBlock(f"stem_block{j}", None, j, stem) for j in range(arch.stem.depth)]
    cin, side = c0, sides[0]
    for i, (sa, ss) in enumerate(zip(arch.stages, space.stages)):
        stride = 2 if ss.downsample else 1
        if ss.is_transformer:
            spec = _transition(space, side, cin, sa.width, stride)
            out.append(PlacedBlock(f"stage{i}_layer0", i, 0, spec))
            side = spec.output_side
            spec = _transformer(space, side, sa.width, sa.mlp_ratio, sa.v_scale)
            out += [PlacedBlock(f"stage{i}_layer{j}", i, j, spec) for j in range(sa.depth)]
        else:
            for j in range(sa.depth):
                c_in, s = (cin, stride) if j == 0 else (sa.width, 1)
                spec = _mbconv(side, c_in, sa.width, s, sa.kernel, sa.expand_ratio, ss.se)
                out.append(PlacedBlock(f"stage{i}_block{j}", i, j, spec))
                side = spec.output_side
        cin = sa.width
    out.append(PlacedBlock("head", None, 0, _head(space, side, cin)))
    if side != sides[-1]:  # NOTE: guards the side arithmetic against space.feature_sides
        raise ValueError(f"plan: final side {side} != space side {sides[-1]}")
    return out


def plan(space: SearchSpace, arch: ArchConfig) -> list[BlockSpec]:
    """The blocks of ``arch`` in execution order (validates the arch first)."""
    return [b.spec for b in placed_plan(space, arch)]


# -------------------------------------------------------------------------------- encoding
STEM_COLUMNS = 4
STAGE_COLUMNS = 4


def num_columns(space: SearchSpace) -> int:
    """Length of an encoded arch row of ``space``."""
    return STEM_COLUMNS + STAGE_COLUMNS * len(space.stages)


def arch_row(arch: ArchConfig) -> list[int]:
    """The encoded row of ``arch`` as plain ints (layout in the module docstring)."""
    row = [arch.resolution, arch.stem.width, arch.stem.depth, arch.stem.kernel]
    for s in arch.stages:
        if s.is_transformer:
            row += [s.width, s.depth, s.mlp_ratio, s.v_scale]
        else:
            row += [s.width, s.depth, s.expand_ratio, s.kernel]
    return row


def encode(space: SearchSpace, archs: Sequence[ArchConfig]) -> np.ndarray:
    """Archs -> ``(n, num_columns(space))`` int32 rows."""
    rows = [arch_row(a) for a in archs]
    return np.asarray(rows, dtype=np.int32).reshape(len(rows), num_columns(space))


def decode(space: SearchSpace, row: Sequence[int]) -> ArchConfig:
    """One encoded row -> ``ArchConfig``."""
    row = [int(v) for v in row]
    if len(row) != num_columns(space):
        raise ValueError(
            f"encoded arch has {len(row)} values; space '{space.name}' needs "
            f"{num_columns(space)}"
        )
    stages = []
    for i, ss in enumerate(space.stages):
        w, d, a, b = row[STEM_COLUMNS + STAGE_COLUMNS * i : STEM_COLUMNS + STAGE_COLUMNS * (i + 1)]
        if ss.is_transformer:
            stages.append(StageArch(w, d, mlp_ratio=a, v_scale=b))
        else:
            stages.append(StageArch(w, d, expand_ratio=a, kernel=b))
    return ArchConfig(row[0], StemArch(row[1], row[2], row[3]), tuple(stages))


def sides_table(space: SearchSpace, resolutions: Sequence[int]) -> np.ndarray:
    """``(len(resolutions), 1 + stages)`` int64 feature-map sides (``space.feature_sides``)."""
    return np.asarray([space.feature_sides(r) for r in resolutions], dtype=np.int64)


# ---------------------------------------------------------------------- FLOPs and params
# Every function below broadcasts over NumPy integer arrays (or takes plain ints). MACs follow
# the official formula (docs/method.md#flops) with its quirks reproduced on purpose
# (docs/method.md#reproduced-flops-quirks): the V depthwise conv counts 1 MAC per output, the
# stride-2 shortcut 1x1 is counted even when it is not executed, the transition MBConv of
# transformer stages omits SE and shortcut, stride-2 blocks use s_in = 2 * s even for odd sides,
# BN/LN/activations/resize are ignored. Params are the standalone subnet's trainable weights.
QK_DIM = 16  # per-head q/k dim (QK scale 1)


def mbconv_macs(cin, c, e, k, s_in, s, se: bool, shortcut):
    """MACs of an MBConv: pw (side ``s_in``), dw k x k and pwl (side ``s``), SE, 1x1 shortcut
    (``shortcut``: a bool or a boolean array)."""
    inner = cin * e
    f = cin * inner * s_in * s_in + inner * k * k * s * s + inner * c * s * s
    if se:
        f = f + 2 * inner * (inner // 4)
    return f + shortcut * (cin * c * s * s)


def stem_macs(s0, c0, d0, k0):
    """First conv + ``d0`` stem blocks at side ``s0`` (official formula)."""
    return 27 * c0 * s0 * s0 + d0 * (c0 * s0 * s0 * k0 * k0 + c0 * c0 * s0 * s0)


def stage_macs(space: SearchSpace, i: int, s, cin, c, d, a, b):
    """MACs of stage ``i`` (official formula): side ``s``, input width ``cin``, width ``c``,
    depth ``d``, fields ``(a, b)`` of the encoding."""
    ss = space.stages[i]
    if not ss.is_transformer:
        s_in = 2 * s if ss.downsample else s
        first = mbconv_macs(cin, c, a, b, s_in, s, ss.se, ss.downsample)
        rest = mbconv_macs(c, c, a, b, s, s, ss.se, False)
        return first + (d - 1) * rest
    s_in = 2 * s if ss.downsample else s
    e, k = space.transition_expand, space.transition_kernel
    transition = mbconv_macs(cin, c, e, k, s_in, s, False, False)
    h = c // space.head_dim
    dv = 16 * b
    n = s * s
    layer = h * n * n * QK_DIM + h * n * n + h * dv * n * n  # q@k, softmax, attn@v
    layer = layer + c * n * (2 * QK_DIM * h + dv * h) + n * dv * h * c  # qkv + proj
    layer = layer + n * dv * h  # V depthwise, 1 MAC per output (official quirk)
    layer = layer + 2 * c * (a * c) * n  # FFN
    return transition + d * layer


def head_macs(space: SearchSpace, s5, c5, num_classes: int):
    """MACs of the head on a side-``s5`` map of width ``c5``."""
    hc = space.head_mul * c5
    return c5 * hc * s5 * s5 + hc * space.head_width + space.head_width * num_classes


def _bn(c):
    return 2 * c  # gamma, beta


def mbconv_params(cin, c, e, k, se: bool):
    """Params of a standalone MBConv (BN affine, SE biases, the 1x1 shortcut when widths
    differ)."""
    inner = cin * e
    p = cin * inner + _bn(inner) + k * k * inner + _bn(inner)
    if se:
        q = inner // 4
        p = p + inner * q + q + q * inner + inner
    return p + inner * c + _bn(c) + (cin != c) * (cin * c)


def stem_params(c0, d0, k0):
    """Params of the first conv + ``d0`` stem blocks."""
    return 27 * c0 + _bn(c0) + d0 * (k0 * k0 * c0 + _bn(c0) + c0 * c0 + _bn(c0))


def stage_params(space: SearchSpace, i: int, s, cin, c, d, a, b):
    """Params of stage ``i`` (arguments as ``stage_macs``; relative-position tables at
    ``(2s - 1)^2 * heads``)."""
    ss = space.stages[i]
    if not ss.is_transformer:
        return mbconv_params(cin, c, a, b, ss.se) + (d - 1) * mbconv_params(c, c, a, b, ss.se)
    e, k = space.transition_expand, space.transition_kernel
    h, hid = c // space.head_dim, a * c
    attn = _bn(c) + c * (2 + b) * c + 9 * b * c + b * c * c + c + (2 * s - 1) ** 2 * h
    ffn = _bn(c) + c * hid + hid + hid * c + c
    return mbconv_params(cin, c, e, k, True) + d * (attn + ffn)


def head_params(space: SearchSpace, c5, num_classes: int):
    """Params of the head on width ``c5``."""
    hc = space.head_mul * c5
    return (
        c5 * hc
        + hc
        + _bn(hc)
        + hc * space.head_width
        + space.head_width
        + space.head_width * num_classes
        + num_classes
    )


def parts(
    space: SearchSpace, columns: Sequence, sides: Sequence, num_classes: Optional[int] = None
) -> dict[str, tuple[Any, Any]]:
    """``{part: (MACs, params)}`` for 'stem', 'stage0'..'stageN', 'head' (the official split).

    Args:
        space: the search space.
        columns: the encoded columns (``arch_row(arch)`` for one arch, or the columns of
            ``encode``'s rows: one array per column).
        sides: ``space.feature_sides(resolution)`` (or one array per side, as the columns).
        num_classes: classifier outputs (default ``space.num_classes``).
    """
    num_classes = space.num_classes if num_classes is None else num_classes
    c0, d0, k0 = columns[1], columns[2], columns[3]
    out = {"stem": (stem_macs(sides[0], c0, d0, k0), stem_params(c0, d0, k0))}
    cin = c0
    for i in range(len(space.stages)):
        j = STEM_COLUMNS + STAGE_COLUMNS * i
        c, d, a, b = columns[j : j + STAGE_COLUMNS]
        s = sides[i + 1]
        out[f"stage{i}"] = (
            stage_macs(space, i, s, cin, c, d, a, b),
            stage_params(space, i, s, cin, c, d, a, b),
        )
        cin = c
    out["head"] = (
        head_macs(space, sides[-1], cin, num_classes),
        head_params(space, cin, num_classes),
    )
    return out


# ------------------------------------------------------------------------------- features
FEATURE_NAMES = ("macs", "act_elems", "params", "tokens", "attn_elems", "ops")


def _mbconv_features(sig: BlockSpec) -> dict[str, float]:
    s_in, s = sig.input_side, sig.output_side
    cin, c, k = sig.in_channels, sig.out_channels, sig.kernel
    inner = cin * sig.expand_ratio
    macs = mbconv_macs(cin, c, sig.expand_ratio, k, s_in, s, sig.se, cin != c)
    params = cin * inner + inner * k * k + inner * c
    act = cin * s_in**2 + inner * s_in**2 + inner * s * s + c * s * s
    ops = 7  # pw, bn-folded, hswish, dw, hswish, pwl, (add)
    if sig.se:
        params += 2 * inner * (inner // 4)
        act += inner * s * s  # the gating multiply
        ops += 5
    if sig.stride == 2:
        act += cin * s * s
        ops += 2
    if cin != c:
        params += cin * c
        ops += 1
    return {"macs": macs, "act_elems": act, "params": params, "tokens": s * s, "ops": ops}


def block_features(sig: BlockSpec) -> dict[str, float]:
    """Shape features of one block (the regressors' inputs); every name in FEATURE_NAMES.

    MACs here are what the block executes (the shortcut 1x1 only when present, SE included),
    not the official FLOPs formula: the regressors want the real work.
    """
    k = sig.kind
    f: dict[str, float]
    if k is BlockKind.FIRST_CONV:
        s = sig.output_side
        c = sig.out_channels
        f = {
            "macs": 27 * c * s * s,
            "act_elems": 3 * sig.input_side**2 + c * s * s,
            "params": 27 * c,
            "tokens": s * s,
            "ops": 3,
        }
    elif k is BlockKind.STEM_BLOCK:
        s, c, kk = sig.input_side, sig.out_channels, sig.kernel
        f = {
            "macs": c * s * s * kk * kk + c * c * s * s,
            "act_elems": 4 * c * s * s,
            "params": c * kk * kk + c * c,
            "tokens": s * s,
            "ops": 4,
        }
    elif k in (BlockKind.MBCONV, BlockKind.TRANSITION):
        f = _mbconv_features(sig)
    elif k is BlockKind.TRANSFORMER:
        n = sig.input_side**2
        c, h = sig.out_channels, sig.heads
        dv = 16 * sig.v_scale
        hid = sig.mlp_ratio * c
        qkv = (2 * sig.head_dim + dv) * h
        macs = (
            n * c * qkv  # qkv
            + h * n * n * sig.head_dim  # q @ k^T
            + h * n * n * dv  # attn @ v
            + n * dv * h * 9  # V depthwise 3x3
            + n * dv * h * c  # proj
            + 2 * n * c * hid  # FFN
        )
        f = {
            "macs": macs,
            "act_elems": n * (4 * c + 2 * qkv + 2 * dv * h + 2 * hid),
            "params": c * qkv + dv * h * 9 + dv * h * c + 2 * c * hid,
            "tokens": n,
            "attn_elems": h * n * n,
            "ops": 30,
        }
    elif k is BlockKind.HEAD:
        n, c, hc = sig.input_side**2, sig.in_channels, sig.hidden
        f = {
            "macs": n * c * hc + hc * sig.head_width + sig.head_width * sig.num_classes,
            "act_elems": n * (c + 2 * hc) + sig.head_width + sig.num_classes,
            "params": c * hc + hc * sig.head_width + sig.head_width * sig.num_classes,
            "tokens": n,
            "ops": 9,
        }
    else:  # pragma: no cover - BlockKind is closed
        raise ValueError(f"block_features: unknown kind {k!r}")
    return {name: float(f.get(name, 0.0)) for name in FEATURE_NAMES}


def enumerate_blocks(space: SearchSpace) -> dict[BlockKind, list[BlockSpec]]:
    """Every block signature the space can produce, per kind (sorted, deduplicated).

    Exact for the first conv, stem blocks and head; for MBConv / transition / transformer the
    input width is any width the previous stage (or stem) allows that does not exceed the
    stage's width, matching the non-decreasing width rule.
    """
    out: dict[BlockKind, set] = {k: set() for k in BlockKind}
    for r in space.resolutions:
        sides = space.feature_sides(r)
        for c0 in space.stem.widths:
            out[BlockKind.FIRST_CONV].add(_first_conv(r, c0))
            out[BlockKind.STEM_BLOCK].update(
                _stem_block(sides[0], c0, k) for k in space.stem.kernels
            )
        prev_widths = set(space.stem.widths)
        side = sides[0]
        for i, ss in enumerate(space.stages):
            stride = 2 if ss.downsample else 1
            for c in ss.widths:
                cins = sorted(w for w in prev_widths if w <= c)
                if ss.is_transformer:
                    out[BlockKind.TRANSITION].update(
                        _transition(space, side, cin, c, stride) for cin in cins
                    )
                    out[BlockKind.TRANSFORMER].update(
                        _transformer(space, sides[i + 1], c, m, v)
                        for m in ss.mlp_ratios
                        for v in ss.v_scales
                    )
                    continue
                for e in ss.expand_ratios:
                    for k in ss.kernels:
                        out[BlockKind.MBCONV].update(
                            _mbconv(side, cin, c, stride, k, e, ss.se) for cin in cins
                        )
                        if max(ss.depths) > 1:
                            out[BlockKind.MBCONV].add(_mbconv(sides[i + 1], c, c, 1, k, e, ss.se))
            prev_widths = set(ss.widths)
            side = sides[i + 1]
        out[BlockKind.HEAD].update(_head(space, sides[-1], c5) for c5 in space.stages[-1].widths)
    return {k: sorted(v, key=_sort_key) for k, v in out.items()}


def _sort_key(sig: BlockSpec) -> tuple:
    return tuple(
        (v.value if isinstance(v, BlockKind) else int(v)) for v in dataclasses.astuple(sig)
    )

"""An architecture as a sequence of typed latency blocks ("ops") with shape features.

Shared by the LUT builder (``export/lut_builder.py``: which blocks to measure, their features
for the per-block-type regressors) and the predictor (``search/latency.py``: which LUT entries
an arch needs). Pure Python; nothing here builds a model.

The decomposition follows the network (docs/method.md#blocks): first conv, ``stem.depth`` stem
blocks, one MBConv per conv-stage layer, per transformer stage a transition MBConv (layer 0)
followed by ``depth`` transformer layers (attention + FFN), then the head. Each op is keyed by an
``OpSignature``: a frozen dataclass with named fields, hashable, JSON round-trippable (never a
joined string, STYLE §4.4).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Mapping

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.space import SearchSpace


class OpKind(str, enum.Enum):
    """Block types; each gets its own fitted latency model."""

    FIRST_CONV = "first_conv"  # 3x3 stride-2 conv 3 -> C0, BN, Hardswish
    STEM_BLOCK = "stem_block"  # DW k, BN, Hswish, PW C0 -> C0, BN, identity residual
    MBCONV = "mbconv"  # conv-stage MBConv (optional SE), shortcut rule of docs/method.md#mbconv
    TRANSITION = "transition"  # tokens -> map, MBConv (e=6, k=3, SE), map -> tokens
    TRANSFORMER = "transformer"  # attention + FFN pair on tokens (pre-norm)
    HEAD = "head"  # token-wise linear, BN, Hswish, mean, linear, Hswish, classifier


@dataclasses.dataclass(frozen=True)
class OpSignature:
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

    kind: OpKind
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
        if not isinstance(self.kind, OpKind):
            try:
                object.__setattr__(self, "kind", OpKind(self.kind))
            except ValueError:
                raise ValueError(
                    f"op.kind={self.kind!r}: expected one of {[k.value for k in OpKind]}"
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
    def from_dict(cls, d: Mapping[str, Any]) -> "OpSignature":
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


# --------------------------------------------------------------------------- decomposition
def decompose(space: SearchSpace, arch: ArchConfig) -> list[OpSignature]:
    """The blocks of ``arch`` in execution order (validates the arch first)."""
    space.validate_arch(arch)
    sides = space.feature_sides(arch.resolution)
    ops = [
        OpSignature(
            OpKind.FIRST_CONV,
            input_side=arch.resolution,
            in_channels=3,
            out_channels=arch.stem.width,
            stride=2,
            kernel=3,
        )
    ]
    c0 = arch.stem.width
    ops += [
        OpSignature(
            OpKind.STEM_BLOCK,
            input_side=sides[0],
            in_channels=c0,
            out_channels=c0,
            kernel=arch.stem.kernel,
        )
    ] * arch.stem.depth
    cin, side = c0, sides[0]
    for sa, ss in zip(arch.stages, space.stages):
        stride = 2 if ss.downsample else 1
        if ss.is_transformer:
            ops.append(
                OpSignature(
                    OpKind.TRANSITION,
                    input_side=side,
                    in_channels=cin,
                    out_channels=sa.width,
                    stride=stride,
                    kernel=space.transition_kernel,
                    expand_ratio=space.transition_expand,
                    se=True,
                )
            )
            side = ops[-1].output_side
            ops += [
                OpSignature(
                    OpKind.TRANSFORMER,
                    input_side=side,
                    in_channels=sa.width,
                    out_channels=sa.width,
                    mlp_ratio=sa.mlp_ratio,
                    v_scale=sa.v_scale,
                    head_dim=space.head_dim,
                )
            ] * sa.depth
        else:
            for j in range(sa.depth):
                s = stride if j == 0 else 1
                ops.append(
                    OpSignature(
                        OpKind.MBCONV,
                        input_side=side,
                        in_channels=cin if j == 0 else sa.width,
                        out_channels=sa.width,
                        stride=s,
                        kernel=sa.kernel,
                        expand_ratio=sa.expand_ratio,
                        se=ss.se,
                    )
                )
                side = ops[-1].output_side
        cin = sa.width
    c5 = arch.stages[-1].width
    ops.append(
        OpSignature(
            OpKind.HEAD,
            input_side=side,
            in_channels=c5,
            out_channels=space.num_classes,
            hidden=space.head_mul * c5,
            head_width=space.head_width,
            num_classes=space.num_classes,
        )
    )
    if side != sides[-1]:  # NOTE: guards the side arithmetic against space.feature_sides
        raise ValueError(f"decompose: final side {side} != space side {sides[-1]}")
    return ops


# ------------------------------------------------------------------------------- features
FEATURE_NAMES = ("macs", "act_elems", "params", "tokens", "attn_elems", "ops")


def _mbconv_features(sig: OpSignature) -> dict[str, float]:
    s_in, s = sig.input_side, sig.output_side
    cin, c, k = sig.in_channels, sig.out_channels, sig.kernel
    inner = cin * sig.expand_ratio
    macs = cin * inner * s_in**2 + inner * k * k * s * s + inner * c * s * s
    params = cin * inner + inner * k * k + inner * c
    act = cin * s_in**2 + inner * s_in**2 + inner * s * s + c * s * s
    ops = 7  # pw, bn-folded, hswish, dw, hswish, pwl, (add)
    if sig.se:
        q = inner // 4
        macs += 2 * inner * q
        params += 2 * inner * q
        act += inner * s * s  # the gating multiply
        ops += 5
    if sig.stride == 2:
        act += cin * s * s
        ops += 2
    if cin != c:
        macs += cin * c * s * s
        params += cin * c
        ops += 1
    return {"macs": macs, "act_elems": act, "params": params, "tokens": s * s, "ops": ops}


def op_features(sig: OpSignature) -> dict[str, float]:
    """Shape features of one block (the regressors' inputs); every name in FEATURE_NAMES.

    MACs here are what the block executes (the shortcut 1x1 only when present, SE included),
    not the official FLOPs formula: the regressors want the real work.
    """
    k = sig.kind
    f: dict[str, float]
    if k is OpKind.FIRST_CONV:
        s = sig.output_side
        c = sig.out_channels
        f = {
            "macs": 27 * c * s * s,
            "act_elems": 3 * sig.input_side**2 + c * s * s,
            "params": 27 * c,
            "tokens": s * s,
            "ops": 3,
        }
    elif k is OpKind.STEM_BLOCK:
        s, c, kk = sig.input_side, sig.out_channels, sig.kernel
        f = {
            "macs": c * s * s * kk * kk + c * c * s * s,
            "act_elems": 4 * c * s * s,
            "params": c * kk * kk + c * c,
            "tokens": s * s,
            "ops": 4,
        }
    elif k in (OpKind.MBCONV, OpKind.TRANSITION):
        f = _mbconv_features(sig)
    elif k is OpKind.TRANSFORMER:
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
    elif k is OpKind.HEAD:
        n, c, hc = sig.input_side**2, sig.in_channels, sig.hidden
        f = {
            "macs": n * c * hc + hc * sig.head_width + sig.head_width * sig.num_classes,
            "act_elems": n * (c + 2 * hc) + sig.head_width + sig.num_classes,
            "params": c * hc + hc * sig.head_width + sig.head_width * sig.num_classes,
            "tokens": n,
            "ops": 9,
        }
    else:  # pragma: no cover - OpKind is closed
        raise ValueError(f"op_features: unknown kind {k!r}")
    return {name: float(f.get(name, 0.0)) for name in FEATURE_NAMES}


def enumerate_ops(space: SearchSpace) -> dict[OpKind, list[OpSignature]]:
    """Every block signature the space can produce, per kind (sorted, deduplicated).

    Exact for the first conv, stem blocks and head; for MBConv / transition / transformer the
    input width is any width the previous stage (or stem) allows that does not exceed the
    stage's width, matching the non-decreasing width rule.
    """
    out: dict[OpKind, set] = {k: set() for k in OpKind}
    for r in space.resolutions:
        sides = space.feature_sides(r)
        for c0 in space.stem.widths:
            out[OpKind.FIRST_CONV].add(OpSignature(OpKind.FIRST_CONV, r, 3, c0, 2, 3))
            for k in space.stem.kernels:
                out[OpKind.STEM_BLOCK].add(OpSignature(OpKind.STEM_BLOCK, sides[0], c0, c0, 1, k))
        prev_widths = set(space.stem.widths)
        side = sides[0]
        for i, ss in enumerate(space.stages):
            stride = 2 if ss.downsample else 1
            for c in ss.widths:
                cins = sorted(w for w in prev_widths if w <= c)
                if ss.is_transformer:
                    for cin in cins:
                        out[OpKind.TRANSITION].add(
                            OpSignature(
                                OpKind.TRANSITION,
                                side,
                                cin,
                                c,
                                stride,
                                space.transition_kernel,
                                space.transition_expand,
                                True,
                            )
                        )
                    for m in ss.mlp_ratios:
                        for v in ss.v_scales:
                            out[OpKind.TRANSFORMER].add(
                                OpSignature(
                                    OpKind.TRANSFORMER,
                                    sides[i + 1],
                                    c,
                                    c,
                                    mlp_ratio=m,
                                    v_scale=v,
                                    head_dim=space.head_dim,
                                )
                            )
                else:
                    for e in ss.expand_ratios:
                        for k in ss.kernels:
                            for cin in cins:
                                out[OpKind.MBCONV].add(
                                    OpSignature(OpKind.MBCONV, side, cin, c, stride, k, e, ss.se)
                                )
                            if max(ss.depths) > 1:
                                out[OpKind.MBCONV].add(
                                    OpSignature(OpKind.MBCONV, sides[i + 1], c, c, 1, k, e, ss.se)
                                )
            prev_widths = set(ss.widths)
            side = sides[i + 1]
        for c5 in space.stages[-1].widths:
            out[OpKind.HEAD].add(
                OpSignature(
                    OpKind.HEAD,
                    sides[-1],
                    c5,
                    space.num_classes,
                    hidden=space.head_mul * c5,
                    head_width=space.head_width,
                    num_classes=space.num_classes,
                )
            )
    return {k: sorted(v, key=_sort_key) for k, v in out.items()}


def _sort_key(sig: OpSignature) -> tuple:
    return tuple((v.value if isinstance(v, OpKind) else int(v)) for v in dataclasses.astuple(sig))

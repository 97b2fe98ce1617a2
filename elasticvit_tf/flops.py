"""Analytic FLOPs (MACs) and parameter counts: the official formula, exactly (docs/method.md#flops).

Pure Python, no model is built. FLOPs are multiply-accumulates in millions (the official
"FLOPs"). Quirks reproduced on purpose (docs/method.md#reproduced-flops-quirks): the V depthwise
conv counts 1 MAC per output, the stride-2 shortcut 1x1 is counted even when it is not executed, the
transition MBConv of transformer stages omits SE and shortcut, stride-2 blocks use s_in = 2 * s even
for odd sides, BN/LN/activations/resize are ignored.

Params are those of the standalone subnet (the extracted Keras model's trainable weights):
sliced weights actually used, depthwise kernels at their used size, BN/LN affine (gamma, beta),
biases, relative-position tables at (2s - 1)^2 * heads.
"""

from __future__ import annotations

from typing import Optional

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.space import SearchSpace

_DQ = 16  # per-head q/k dim (QK scale 1)


def _stem_flops(space: SearchSpace, arch: ArchConfig) -> int:
    side = space.feature_sides(arch.resolution)[0]
    c0, k0 = arch.stem.width, arch.stem.kernel
    return 27 * c0 * side * side + arch.stem.depth * (
        c0 * side * side * k0 * k0 + c0 * c0 * side * side
    )


def _conv_block_flops(cin, c, e, k, stride, se, s) -> int:
    s_in = 2 * s if stride == 2 else s
    inner = cin * e
    f = cin * inner * s_in * s_in + inner * k * k * s * s + inner * c * s * s
    if se:
        f += 2 * inner * (inner // 4)
    if stride == 2:
        f += cin * c * s * s
    return f


def _transformer_layer_flops(space, cin, c, m, v, s, first, downsample) -> int:
    h = c // space.head_dim
    dv = 16 * v
    n = s * s
    f = 0
    if first:
        s_in = 2 * s if downsample else s
        inner = space.transition_expand * cin
        kk = space.transition_kernel * space.transition_kernel
        f += cin * inner * s_in * s_in + inner * kk * s * s + inner * c * s * s
    f += h * n * n * _DQ + h * n * n + h * dv * n * n  # q@k, softmax, attn@v
    f += c * n * (2 * _DQ * h + dv * h) + n * dv * h * c  # qkv + proj
    f += n * dv * h  # V depthwise (1 MAC per output)
    f += 2 * c * int(m * c) * n  # FFN
    return f


def flops_breakdown(
    space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None
) -> dict[str, float]:
    """MFLOPs per part: 'stem', 'stage0'..'stageN', 'head' (the official per-stage split)."""
    num_classes = space.num_classes if num_classes is None else num_classes
    sides = space.feature_sides(arch.resolution)
    out = {"stem": _stem_flops(space, arch)}
    cin = arch.stem.width
    for i, (sa, ss) in enumerate(zip(arch.stages, space.stages)):
        s = sides[i + 1]
        f = 0
        for j in range(sa.depth):
            if ss.is_transformer:
                f += _transformer_layer_flops(
                    space,
                    cin,
                    sa.width,
                    sa.mlp_ratio,
                    sa.v_scale,
                    s,
                    first=(j == 0),
                    downsample=ss.downsample,
                )
            else:
                stride = 2 if (j == 0 and ss.downsample) else 1
                f += _conv_block_flops(cin, sa.width, sa.expand_ratio, sa.kernel, stride, ss.se, s)
            cin = sa.width
        out[f"stage{i}"] = f
    c5, s5 = arch.stages[-1].width, sides[-1]
    hc = space.head_mul * c5
    out["head"] = c5 * hc * s5 * s5 + hc * space.head_width + space.head_width * num_classes
    return {k: v / 1e6 for k, v in out.items()}


def count_flops(space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None) -> float:
    """Total MFLOPs (MACs / 1e6) of ``arch`` by the official formula."""
    return sum(flops_breakdown(space, arch, num_classes).values())


# ------------------------------------------------------------------------------- params
def _bn(c):
    return 2 * c


def _mbconv_params(cin, c, e, k, se, mid=None) -> int:
    inner = cin * e
    p = cin * inner + _bn(inner) + k * k * inner + _bn(inner)
    if se:
        q = inner // 4
        p += inner * q + q + q * inner + inner
    p += inner * c + _bn(c)
    if cin != c:
        p += cin * c  # 1x1 shortcut conv, no bias
    return p


def params_breakdown(
    space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None
) -> dict[str, int]:
    """Parameter count per part of the standalone subnet (see module docstring)."""
    num_classes = space.num_classes if num_classes is None else num_classes
    sides = space.feature_sides(arch.resolution)
    c0, k0 = arch.stem.width, arch.stem.kernel
    out = {
        "stem": 27 * c0 + _bn(c0) + arch.stem.depth * (k0 * k0 * c0 + _bn(c0) + c0 * c0 + _bn(c0))
    }
    cin = c0
    for i, (sa, ss) in enumerate(zip(arch.stages, space.stages)):
        p = 0
        s = sides[i + 1]
        for j in range(sa.depth):
            c = sa.width
            if ss.is_transformer:
                if j == 0:
                    p += _mbconv_params(
                        cin, c, space.transition_expand, space.transition_kernel, True
                    )
                h, v, m = c // space.head_dim, sa.v_scale, sa.mlp_ratio
                p += _bn(c) + c * (2 + v) * c + 9 * v * c + v * c * c + c + (2 * s - 1) ** 2 * h
                hid = int(m * c)
                p += _bn(c) + c * hid + hid + hid * c + c
            else:
                p += _mbconv_params(cin, c, sa.expand_ratio, sa.kernel, ss.se)
            cin = c
        out[f"stage{i}"] = p
    c5 = arch.stages[-1].width
    hc = space.head_mul * c5
    out["head"] = (
        c5 * hc
        + hc
        + _bn(hc)
        + hc * space.head_width
        + space.head_width
        + space.head_width * num_classes
        + num_classes
    )
    return out


def count_params(space: SearchSpace, arch: ArchConfig, num_classes: Optional[int] = None) -> int:
    """Trainable parameters of the standalone subnet (equals the extracted model's count)."""
    return sum(params_breakdown(space, arch, num_classes).values())

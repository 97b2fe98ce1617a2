"""Independent NumPy reference of the official ElasticViT supernet forward pass (test support).

Written from the specification (docs/method.md#blocks,
docs/method.md#departures-from-the-official-code) and not from the Keras layers of this package, so
that comparing the two can catch a shared misunderstanding. It runs directly on
an *official-format* state dict: a mapping from the official PyTorch parameter names to arrays in
PyTorch layouts (conv ``[out, in, kh, kw]``, depthwise ``[C, 1, kh, kw]``, linear ``[out, in]``),
sliced for a given ``ArchConfig``.

Images are NHWC (the Keras convention); everything is computed in float64.

Also here: ``official_layout(space)`` (the official tensor names and shapes for any space with
the ElasticViT structure; for ``elasticvit`` exactly the 690 rows of
``official_supernet_state_dict.tsv``) and ``random_state_dict(space, seed)``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

BN_EPS = 1e-5
LN_EPS = 1e-5
TORCH_CUBIC_A = -0.75

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ----------------------------------------------------------------------------- primitives
def hardswish(x):
    """PyTorch Hardswish: x * relu6(x + 3) / 6."""
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def hardsigmoid(x):
    """PyTorch Hardsigmoid: relu6(x + 3) / 6."""
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def batch_norm(x, sd, prefix, c):
    """Inference-mode BN over the last axis with the leading ``c`` channels of the super-BN."""
    g = sd[prefix + ".weight"][:c]
    b = sd[prefix + ".bias"][:c]
    m = sd[prefix + ".running_mean"][:c]
    v = sd[prefix + ".running_var"][:c]
    return (x - m) / np.sqrt(v + BN_EPS) * g + b


def token_layer_norm(tokens, gamma, beta):
    """The official ``LNSuper``: statistics jointly over tokens x channels of each sample.

    Args:
        tokens: (B, N, C).
        gamma, beta: per-channel affine, at least C entries (leading slice used).
    """
    c = tokens.shape[-1]
    mean = tokens.mean(axis=(1, 2), keepdims=True)
    var = tokens.var(axis=(1, 2), keepdims=True)  # biased, as layer_norm
    return (tokens - mean) / np.sqrt(var + LN_EPS) * gamma[:c] + beta[:c]


def conv2d(x, w, stride=1):
    """Full conv, NHWC input, PyTorch weight [out, in, k, k], symmetric padding k // 2."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, wd = x.shape[1], x.shape[2]
    ho = (h + 2 * p - k) // stride + 1
    wo = (wd + 2 * p - k) // stride + 1
    out = np.zeros(x.shape[:1] + (ho, wo, w.shape[0]))
    for i in range(k):
        for j in range(k):
            patch = xp[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += patch @ w[:, :, i, j].T
    return out


def conv1x1(x, w, b=None):
    """Point-wise conv / linear on the last axis; ``w`` is [out, in] or [out, in, 1, 1]."""
    w2 = w.reshape(w.shape[0], w.shape[1])
    y = x @ w2.T
    return y if b is None else y + b


def depthwise_conv(x, w, stride=1):
    """Depthwise conv, NHWC input, PyTorch weight [C, 1, k, k], symmetric padding k // 2."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, wd = x.shape[1], x.shape[2]
    ho = (h + 2 * p - k) // stride + 1
    wo = (wd + 2 * p - k) // stride + 1
    out = np.zeros(x.shape[:1] + (ho, wo, x.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = xp[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += patch * w[:, 0, i, j]
    return out


def centre_crop_kernel(w, k):
    """A k x k kernel from the centre of a larger super-kernel [..., K, K]."""
    big = w.shape[-1]
    o = (big - k) // 2
    return w[..., o : o + k, o : o + k]


def avg_pool_shortcut(x):
    """Stride-2 shortcut pooling of docs/method.md#padding-and-odd-sides (2x2/2 average, NHWC).

    Even side: plain 2x2/2 average. Odd side: PyTorch pads 1 on every side with
    count_include_pad=True; the trailing pad is never covered, so this equals a zero pad of one
    row on top and one column on the left followed by a 2x2/2 average with divisor 4.
    """
    h, w = x.shape[1], x.shape[2]
    if h % 2 or w % 2:
        if h % 2 != w % 2:
            raise ValueError(f"avg_pool_shortcut: mixed odd/even sides {h}x{w} not expected")
        x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = h + 2, w + 2
        ho, wo = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        x = x[:, : 2 * ho, : 2 * wo]
    else:
        ho, wo = h // 2, w // 2
    b, c = x.shape[0], x.shape[-1]
    return x.reshape(b, ho, 2, wo, 2, c).sum(axis=(2, 4)) / 4.0


# ------------------------------------------------------------------------------- resize
def _cubic_weights(t, a=TORCH_CUBIC_A):
    """Weights of taps x0-1, x0, x0+1, x0+2 for fractional offset t (PyTorch's formulas)."""

    def c1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def c2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([c2(t + 1), c1(t), c1(1 - t), c2(2 - t)], axis=-1)


def torch_bicubic_matrix(in_size, out_size):
    """(out, in) matrix of PyTorch ``interpolate(mode='bicubic', align_corners=False)``.

    Half-pixel centres, scale in/out, no antialias, cubic coefficient -0.75, source indices
    clamped to the border (PyTorch ``upsample_bicubic2d``).
    """
    scale = in_size / out_size
    m = np.zeros((out_size, in_size))
    for o in range(out_size):
        src = scale * (o + 0.5) - 0.5  # NOTE: not clamped at 0 for cubic
        x0 = math.floor(src)
        wts = _cubic_weights(src - x0)
        for tap, wt in zip(range(x0 - 1, x0 + 3), wts):
            m[o, min(max(tap, 0), in_size - 1)] += wt
    return m


def torch_bicubic_resize(images, size):
    """Resizes NHWC ``images`` to ``size`` x ``size`` like PyTorch's bicubic interpolate."""
    mh = torch_bicubic_matrix(images.shape[1], size)
    mw = torch_bicubic_matrix(images.shape[2], size)
    y = np.einsum("oh,bhwc->bowc", mh, images)
    return np.einsum("pw,bowc->bopc", mw, y)


# ---------------------------------------------------------------------------- attention
def relative_position_index(big_r, side):
    """(side^2, side^2) indices into the (2R-1)^2-row table for a side x side token grid.

    index(i, j) = (yi - yj + R - 1) * (2R - 1) + (xi - xj + R - 1), tokens row-major.
    """
    ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + big_r - 1
    dx = xs[:, None] - xs[None, :] + big_r - 1
    return dy * (2 * big_r - 1) + dx


def qkv_super_rows(c, c_max, v_scale):
    """Super-row of W_qkv for every position of the concatenated [Q | K | V] output
    (docs/method.md#transformer-layer).

    Position j < C -> row j; C <= j < 2C -> Cmax + (j - C); j >= 2C -> 2 Cmax + (j - 2C).
    """
    j = np.arange((2 + v_scale) * c)
    return np.where(j < c, j, np.where(j < 2 * c, c_max + j - c, 2 * c_max + j - 2 * c))


def attention(tokens, side, sd, prefix, c, c_max, v_scale, big_r, head_dim):
    """Official attention layer (pre-norm, residual included), docs/method.md#transformer-layer."""
    b, n, _ = tokens.shape
    heads = c // head_dim
    dv = head_dim * v_scale
    z = token_layer_norm(tokens, sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"])
    w = sd[prefix + "qkv.weight"][qkv_super_rows(c, c_max, v_scale)][:, :c]
    t = z @ w.T  # (B, N, (2+v)C)
    t = t.reshape(b, n, heads, 2 * head_dim + dv)  # NOTE: head-major view of [Q|K|V]
    q = t[..., :head_dim].transpose(0, 2, 1, 3)  # (B, H, N, d)
    k = t[..., head_dim : 2 * head_dim].transpose(0, 2, 1, 3)
    vv = t[..., 2 * head_dim :].reshape(b, side, side, heads * dv)
    vv = depthwise_conv(vv, sd[prefix + "dw_v_conv.weight"][: heads * dv])
    vv = vv.reshape(b, n, heads, dv).transpose(0, 2, 1, 3)  # (B, H, N, dv)
    idx = relative_position_index(big_r, side)
    bias = sd[prefix + "attention_bias"][idx][..., :heads].transpose(2, 0, 1)  # (H, N, N)
    logits = q @ k.transpose(0, 1, 3, 2) * head_dim**-0.5 + bias
    logits = logits - logits.max(axis=-1, keepdims=True)
    att = np.exp(logits)
    att = att / att.sum(axis=-1, keepdims=True)
    o = (att @ vv).transpose(0, 2, 1, 3).reshape(b, n, heads * dv)
    o = hardswish(o)
    o = conv1x1(o, sd[prefix + "proj.weight"][:c, : heads * dv], sd[prefix + "proj.bias"][:c])
    return tokens + o


def ffn(tokens, sd, prefix, c, mlp_ratio):
    """Official FFN layer (pre-norm, residual included)."""
    hidden = int(mlp_ratio * c)
    z = token_layer_norm(tokens, sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"])
    h = conv1x1(z, sd[prefix + "fc1.weight"][:hidden, :c], sd[prefix + "fc1.bias"][:hidden])
    h = hardswish(h)
    h = conv1x1(h, sd[prefix + "fc2.weight"][:c, :hidden], sd[prefix + "fc2.bias"][:c])
    return tokens + h


# ------------------------------------------------------------------------------ blocks
def mbconv(x, sd, prefix, cin, c, expand, kernel, stride, se):
    """Elastic MBConv (docs/method.md#mbconv): expansion relative to the block input width
    ``cin``."""
    inner = cin * expand
    h = conv1x1(x, sd[prefix + "pw_conv.weight"][:inner, :cin])
    h = hardswish(batch_norm(h, sd, prefix + "pw_bn", inner))
    wdw = centre_crop_kernel(sd[prefix + "dw_conv.weight"][:inner], kernel)
    h = hardswish(batch_norm(depthwise_conv(h, wdw, stride), sd, prefix + "dw_bn", inner))
    if se:
        red = inner // 4
        g = h.mean(axis=(1, 2), keepdims=True)
        g = np.maximum(
            conv1x1(
                g, sd[prefix + "se_conv1.weight"][:red, :inner], sd[prefix + "se_conv1.bias"][:red]
            ),
            0.0,
        )
        g = hardsigmoid(
            conv1x1(
                g,
                sd[prefix + "se_conv2.weight"][:inner, :red],
                sd[prefix + "se_conv2.bias"][:inner],
            )
        )
        h = h * g
    h = batch_norm(conv1x1(h, sd[prefix + "pwl_conv.weight"][:c, :inner]), sd, prefix + "pwl_bn", c)
    if cin == c and stride == 1:
        return h + x
    r = x
    if stride == 2:
        r = avg_pool_shortcut(r)
    if cin != c:
        r = conv1x1(r, sd[prefix + "shortcut_conv.weight"][:c, :cin])
    return h + r


def stem_block(x, sd, prefix, c0, kernel):
    """Stem block: x + BN2(PW(Hswish(BN1(DW_k(x))))) (no expansion conv)."""
    wdw = centre_crop_kernel(sd[prefix + "dw_conv.weight"][:c0], kernel)
    h = hardswish(batch_norm(depthwise_conv(x, wdw), sd, prefix + "dw_bn", c0))
    h = batch_norm(conv1x1(h, sd[prefix + "pwl_conv.weight"][:c0, :c0]), sd, prefix + "pwl_bn", c0)
    return x + h


# ------------------------------------------------------------------------------ network
def forward(state_dict: Mapping[str, np.ndarray], space, arch, images) -> np.ndarray:
    """Logits of subnet ``arch`` of the official supernet with weights ``state_dict``.

    Args:
        state_dict: official name -> array (PyTorch layouts), any float dtype.
        space: a ``SearchSpace`` with the ElasticViT structure.
        arch: an ``ArchConfig`` of ``space``.
        images: (B, H, W, 3); resized (PyTorch bicubic) to the arch resolution if needed.

    Returns:
        (B, num_classes) float64 logits.
    """
    space.validate_arch(arch)
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in state_dict.items()}
    x = np.asarray(images, dtype=np.float64)
    r = arch.resolution
    if x.shape[1] != r or x.shape[2] != r:
        x = torch_bicubic_resize(x, r)
    c0 = arch.stem.width
    x = conv2d(x, sd["first_conv.weight"][:c0], stride=2)
    x = hardswish(batch_norm(x, sd, "first_conv_bn", c0))
    for i in range(arch.stem.depth):
        x = stem_block(x, sd, f"conv_stem.layers.{i}.0.", c0, arch.stem.kernel)
    cin = c0
    tokens, side = None, None
    for si, (sa, ss) in enumerate(zip(arch.stages, space.stages)):
        base = f"feature_exactor.{si}.layers."
        stride0 = 2 if ss.downsample else 1
        if not ss.is_transformer:
            for bi in range(sa.depth):
                stride = stride0 if bi == 0 else 1
                x = mbconv(
                    x,
                    sd,
                    f"{base}{bi}.0.",
                    cin,
                    sa.width,
                    sa.expand_ratio,
                    sa.kernel,
                    stride,
                    ss.se,
                )
                cin = sa.width
            continue
        c, c_max = sa.width, ss.max_width
        big_r = space.max_feature_side(si)
        for li in range(sa.depth):
            if li == 0:
                if tokens is not None:
                    x = tokens.reshape(tokens.shape[0], side, side, -1)
                x = mbconv(
                    x,
                    sd,
                    f"{base}0.reduction.",
                    cin,
                    c,
                    space.transition_expand,
                    space.transition_kernel,
                    stride0,
                    True,
                )
                side = x.shape[1]
                if x.shape[2] != side:
                    raise ValueError(f"non-square feature map {x.shape[1:3]}")
                tokens = x.reshape(x.shape[0], side * side, c)
                cin = c
            tokens = attention(
                tokens, side, sd, f"{base}{2 * li}.", c, c_max, sa.v_scale, big_r, space.head_dim
            )
            tokens = ffn(tokens, sd, f"{base}{2 * li + 1}.", c, sa.mlp_ratio)
    c5 = arch.stages[-1].width
    hid = space.head_mul * c5
    t = conv1x1(tokens, sd["pre_head_0.weight"][:hid, :c5], sd["pre_head_0.bias"][:hid])
    t = hardswish(batch_norm(t, sd, "pre_head_norm_0", hid))
    g = t.mean(axis=1)
    g = hardswish(conv1x1(g, sd["pre_head_1.weight"][:, :hid], sd["pre_head_1.bias"]))
    return conv1x1(g, sd["classifer.weight"], sd["classifer.bias"])


# ------------------------------------------------------------------------- official layout
def _bn(prefix, c):
    return [(f"{prefix}.{s}", () if s == "num_batches_tracked" else (c,)) for s in _BN_SUFFIXES]


def _mbconv_layout(prefix, c_max, expand, kernel, se):
    inner = expand * c_max
    rows = [(prefix + "pw_conv.weight", (inner, c_max, 1, 1))]
    rows += _bn(prefix + "pw_bn", inner)
    rows += [(prefix + "dw_conv.weight", (inner, 1, kernel, kernel))]
    rows += _bn(prefix + "dw_bn", inner)
    if se:
        rows += [
            (prefix + "se_conv1.weight", (inner // 4, inner, 1, 1)),
            (prefix + "se_conv1.bias", (inner // 4,)),
            (prefix + "se_conv2.weight", (inner, inner // 4, 1, 1)),
            (prefix + "se_conv2.bias", (inner,)),
        ]
    rows += [(prefix + "pwl_conv.weight", (c_max, inner, 1, 1))]
    rows += _bn(prefix + "pwl_bn", c_max)
    rows += [(prefix + "shortcut_conv.weight", (c_max, c_max, 1, 1))]
    return rows


def official_layout(space, num_classes: Optional[int] = None) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of every tensor of the official supernet state dict, in order.

    Super-sizes come from the space's maxima (stem width/kernel/depth, per-stage max width,
    depth, expansion, kernel, MLP ratio and V scale). For ``elasticvit`` this is exactly the
    official table.
    """
    n_cls = space.num_classes if num_classes is None else num_classes
    c0 = max(space.stem.widths)
    rows = [("first_conv.weight", (c0, 3, 3, 3))] + _bn("first_conv_bn", c0)
    k0 = max(space.stem.kernels)
    for i in range(max(space.stem.depths)):
        p = f"conv_stem.layers.{i}.0."
        rows += [(p + "dw_conv.weight", (c0, 1, k0, k0))] + _bn(p + "dw_bn", c0)
        rows += [(p + "pwl_conv.weight", (c0, c0, 1, 1))] + _bn(p + "pwl_bn", c0)
        rows += [(p + "shortcut_conv.weight", (c0, c0, 1, 1))]
    for si, ss in enumerate(space.stages):
        base = f"feature_exactor.{si}.layers."
        cm = ss.max_width
        if not ss.is_transformer:
            for bi in range(ss.max_depth):
                rows += _mbconv_layout(
                    f"{base}{bi}.0.", cm, max(ss.expand_ratios), max(ss.kernels), ss.se
                )
            continue
        big_r = space.max_feature_side(si)
        vmax, mmax = max(ss.v_scales), max(ss.mlp_ratios)
        for li in range(ss.max_depth):
            p = f"{base}{2 * li}."
            rows += [
                (p + "attention_bias", ((2 * big_r - 1) ** 2, cm // space.head_dim)),
                (p + "relative_position_index", (big_r * big_r, big_r * big_r)),
                (p + "qkv.weight", ((2 + vmax) * cm, cm)),
                (p + "proj.weight", (cm, vmax * cm)),
                (p + "proj.bias", (cm,)),
                (p + "dw_v_conv.weight", (vmax * cm, 1, 3, 3)),
                (p + "norm1.weight", (cm,)),
                (p + "norm1.bias", (cm,)),
            ]
            if li == 0:
                rows += _mbconv_layout(
                    p + "reduction.",
                    cm,
                    space.transition_expand,
                    space.transition_kernel,
                    True,
                )
            p = f"{base}{2 * li + 1}."
            rows += [
                (p + "norm1.weight", (cm,)),
                (p + "norm1.bias", (cm,)),
                (p + "fc1.weight", (mmax * cm, cm)),
                (p + "fc1.bias", (mmax * cm,)),
                (p + "fc2.weight", (cm, mmax * cm)),
                (p + "fc2.bias", (cm,)),
            ]
    c5 = space.stages[-1].max_width
    hid = space.head_mul * c5
    rows += [("pre_head_0.weight", (hid, c5)), ("pre_head_0.bias", (hid,))]
    rows += _bn("pre_head_norm_0", hid)
    rows += [
        ("pre_head_1.weight", (space.head_width, hid)),
        ("pre_head_1.bias", (space.head_width,)),
        ("classifer.weight", (n_cls, space.head_width)),
        ("classifer.bias", (n_cls,)),
    ]
    out = []
    for name, shape in rows:
        is_int = name.endswith("num_batches_tracked") or name.endswith("relative_position_index")
        out.append((name, tuple(shape), "int64" if is_int else "float32"))
    return out


def random_state_dict(
    space, seed: int = 0, num_classes: Optional[int] = None
) -> dict[str, np.ndarray]:
    """A random official-format state dict (float32 / int64, PyTorch layouts) for ``space``.

    Weights are uniform with a fan-in scale (the super fan-in, as PyTorch's init), BN statistics
    and affines are random and non-trivial, relative-position tables have std 0.5 so that the
    bias visibly changes the attention, and ``relative_position_index`` holds the true indices.
    """
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape, dtype in official_layout(space, num_classes):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            val = np.array(int(rng.integers(1, 10_000)), dtype=np.int64)
        elif leaf == "relative_position_index":
            big_r = math.isqrt(shape[0])
            val = relative_position_index(big_r, big_r)
        elif leaf == "attention_bias":
            val = rng.normal(0.0, 0.5, shape)
        elif leaf == "running_mean":
            val = rng.normal(0.0, 0.2, shape)
        elif leaf == "running_var":
            val = rng.uniform(0.5, 2.0, shape)
        elif _is_norm_affine(name) and leaf == "weight":
            val = rng.uniform(0.5, 1.5, shape)
        elif _is_norm_affine(name) and leaf == "bias":
            val = rng.normal(0.0, 0.2, shape)
        elif leaf == "bias":
            val = rng.uniform(-0.2, 0.2, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            lim = math.sqrt(3.0 / fan_in)  # unit variance output for unit-variance input
            val = rng.uniform(-lim, lim, shape)
        sd[name] = np.asarray(val, dtype=dtype)
    return sd


def _is_norm_affine(name: str) -> bool:
    parent = name.rsplit(".", 2)[-2]
    return parent.endswith("_bn") or parent.startswith("norm") or parent.startswith("pre_head_norm")

"""Plain Keras builders for the latency blocks of ``elasticvit_tf.blocks``.

Each ``BlockSpec`` becomes the same op structure the static subnet has (docs/method.md#blocks:
symmetric padding on strided convs, the avg-pool shortcut, SE, the token-joint LayerNorm, head-major
q|k|v, the V depthwise conv, Hardswish before the projection, the MobileNetV3 head), with
random weights: latency does not depend on weight values. ``build_op_model`` gives a one-block
model (batch 1, fixed shape) for the LUT; ``build_arch_model`` chains the blocks of a whole
arch for calibration and validation.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import BlockKind, BlockSpec, plan
from elasticvit_tf.space import SearchSpace

_EPS = 1e-5
_TOKEN_KINDS = (BlockKind.TRANSITION, BlockKind.TRANSFORMER, BlockKind.HEAD)


class TokenLayerNorm(layers.Layer):
    """LayerNorm with statistics over tokens x channels jointly, per-channel affine
    (docs/method.md#transformer-layer).

    Args:
        epsilon: variance epsilon.
    """

    def __init__(self, epsilon: float = _EPS, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        c = input_shape[-1]
        self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")

    def call(self, x):
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * ops.rsqrt(var + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


class AttentionCore(layers.Layer):
    """Head-major q|k|v split, V depthwise 3x3, softmax(q k^T / 4 + bias) v, Hardswish.

    Input ``(1, N, H * (2 * qk_dim + dv))``; output ``(1, N, H * dv)``. The relative-position
    bias is a per-side constant ``(H, N, N)`` (the static subnet's cropped table).

    Args:
        heads: number of heads.
        qk_dim: per-head q/k dim.
        v_dim: per-head v dim.
        side: token map side (N = side**2).
    """

    def __init__(self, heads: int, qk_dim: int, v_dim: int, side: int, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.qk_dim = qk_dim
        self.v_dim = v_dim
        self.side = side

    def build(self, input_shape):
        n = self.side * self.side
        self.dw = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="v_dw")
        self.dw.build((None, self.side, self.side, self.heads * self.v_dim))
        self.bias = self.add_weight(
            shape=(1, self.heads, n, n), initializer="random_normal", name="rel_pos_bias"
        )

    def call(self, t):
        h, dq, dv, s = self.heads, self.qk_dim, self.v_dim, self.side
        n = s * s
        t = ops.reshape(t, (-1, n, h, 2 * dq + dv))
        q = ops.transpose(t[..., :dq], (0, 2, 1, 3))
        k = ops.transpose(t[..., dq : 2 * dq], (0, 2, 3, 1))
        v = ops.reshape(t[..., 2 * dq :], (-1, s, s, h * dv))
        v = ops.transpose(ops.reshape(self.dw(v), (-1, n, h, dv)), (0, 2, 1, 3))
        a = ops.softmax(ops.matmul(q, k) * (dq**-0.5) + self.bias, axis=-1)
        o = ops.reshape(ops.transpose(ops.matmul(a, v), (0, 2, 1, 3)), (-1, n, h * dv))
        return ops.hard_swish(o)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"heads": self.heads, "qk_dim": self.qk_dim, "v_dim": self.v_dim, "side": self.side}
        )
        return config


def _bn(x):
    return layers.BatchNormalization(epsilon=_EPS)(x)


def _hs(x):
    return layers.Activation("hard_swish")(x)


def _conv(x, c, k=1, stride=1, bias=False):
    if stride == 2:
        x = layers.ZeroPadding2D(k // 2)(x)
        return layers.Conv2D(c, k, strides=2, padding="valid", use_bias=bias)(x)
    return layers.Conv2D(c, k, padding="same", use_bias=bias)(x)


def _dwconv(x, k, stride=1):
    if stride == 2:
        x = layers.ZeroPadding2D(k // 2)(x)
        return layers.DepthwiseConv2D(k, strides=2, padding="valid", use_bias=False)(x)
    return layers.DepthwiseConv2D(k, padding="same", use_bias=False)(x)


def _mbconv(x, sig: BlockSpec):
    cin, c, stride = sig.in_channels, sig.out_channels, sig.stride
    inner = cin * sig.expand_ratio
    h = _hs(_bn(_conv(x, inner)))
    h = _hs(_bn(_dwconv(h, sig.kernel, stride)))
    if sig.se:
        g = layers.GlobalAveragePooling2D(keepdims=True)(h)
        g = layers.Activation("relu")(_conv(g, inner // 4, bias=True))
        g = layers.Activation("hard_sigmoid")(_conv(g, inner, bias=True))
        h = layers.Multiply()([h, g])
    h = _bn(_conv(h, c))
    r = x
    if stride == 2:
        # NOTE: PyTorch pad-1 count_include_pad pooling (docs/method.md#padding-and-odd-sides)
        if sig.input_side % 2:
            r = layers.ZeroPadding2D(((1, 0), (1, 0)))(r)
        r = layers.AveragePooling2D(2, 2, padding="valid")(r)
    if cin != c:
        r = _conv(r, c)
    return layers.Add()([h, r])


def _transformer(x, sig: BlockSpec):
    c, h, s = sig.out_channels, sig.heads, sig.input_side
    dv = 16 * sig.v_scale
    z = TokenLayerNorm()(x)
    t = layers.Dense((2 * sig.head_dim + dv) * h, use_bias=False)(z)
    o = AttentionCore(h, sig.head_dim, dv, s)(t)
    x = layers.Add()([x, layers.Dense(c)(o)])
    z = TokenLayerNorm()(x)
    z = layers.Dense(c)(_hs(layers.Dense(sig.mlp_ratio * c)(z)))
    return layers.Add()([x, z])


def _head(x, sig: BlockSpec):
    t = _hs(_bn(layers.Dense(sig.hidden)(x)))
    g = layers.GlobalAveragePooling1D()(t)
    g = _hs(layers.Dense(sig.head_width)(g))
    return layers.Dense(sig.num_classes)(g)


def apply_op(x, sig: BlockSpec):
    """Applies one block to ``x`` (maps ``(1, s, s, c)`` or tokens ``(1, s*s, c)``)."""
    s = sig.input_side
    if sig.kind in _TOKEN_KINDS and len(x.shape) == 4:
        x = layers.Reshape((s * s, sig.in_channels))(x)
    if sig.kind is BlockKind.FIRST_CONV:
        return _hs(_bn(_conv(x, sig.out_channels, 3, 2)))
    if sig.kind is BlockKind.STEM_BLOCK:
        h = _hs(_bn(_dwconv(x, sig.kernel)))
        return layers.Add()([x, _bn(_conv(h, sig.out_channels))])
    if sig.kind is BlockKind.MBCONV:
        return _mbconv(x, sig)
    if sig.kind is BlockKind.TRANSITION:
        m = layers.Reshape((s, s, sig.in_channels))(x)
        so = sig.output_side
        return layers.Reshape((so * so, sig.out_channels))(_mbconv(m, sig))
    if sig.kind is BlockKind.TRANSFORMER:
        return _transformer(x, sig)
    if sig.kind is BlockKind.HEAD:
        return _head(x, sig)
    raise ValueError(f"apply_op: unknown op kind {sig.kind!r}")


def op_input_shape(sig: BlockSpec) -> tuple[int, ...]:
    """Per-sample input shape of the one-block model of ``sig``."""
    s = sig.input_side
    if sig.kind in _TOKEN_KINDS:
        return (s * s, sig.in_channels)
    return (s, s, sig.in_channels)


def build_op_model(sig: BlockSpec) -> keras.Model:
    """A batch-1 Keras model of exactly one block."""
    x = keras.Input(op_input_shape(sig), batch_size=1)
    return keras.Model(x, apply_op(x, sig), name=f"op_{sig.kind.value}")


def build_arch_model(space: SearchSpace, arch: ArchConfig) -> keras.Model:
    """A batch-1 Keras model of the whole subnet (r x r x 3 input), block by block."""
    x = keras.Input((arch.resolution, arch.resolution, 3), batch_size=1)
    y = x
    for sig in plan(space, arch):
        y = apply_op(y, sig)
    return keras.Model(x, y, name="subnet")

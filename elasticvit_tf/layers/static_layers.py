"""Small registered custom layers for extracted (static) subnets.

Only what no standard Keras layer provides: the official token x channel "LayerNorm" and the
head-major attention with a depthwise-conv V and a relative position bias. Both use builtin
TFLite ops only (constant-index gather, reshape, transpose, batch matmul, softmax, depthwise
conv, pad).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from elasticvit_tf.layers.dynamic_layers import LN_EPSILON


def relative_position_index(side: int, table_side: int) -> np.ndarray:
    """``[side^2, side^2]`` indices into a ``[(2R - 1)^2, heads]`` table, R = ``table_side``.

    ``idx[i, j] = (yi - yj + R - 1) * (2R - 1) + (xi - xj + R - 1)`` for row-major tokens of a
    ``side x side`` map (docs/method.md#transformer-layer: the top-left crop of the R x R index).
    """
    if side > table_side:
        raise ValueError(f"side={side} exceeds the relative-position table side {table_side}")
    ys, xs = np.divmod(np.arange(side * side), side)
    dy = ys[:, None] - ys[None, :] + table_side - 1
    dx = xs[:, None] - xs[None, :] + table_side - 1
    return (dy * (2 * table_side - 1) + dx).astype(np.int32)


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class TokenLayerNorm(keras.layers.Layer):
    """Official ElasticViT "LayerNorm" on ``(B, N, C)``: moments jointly over tokens and channels
    of each sample, then a per-channel affine (docs/method.md#layernorm-over-tokens-and-channels).

    Args:
        epsilon: variance epsilon.
    """

    def __init__(self, epsilon=LN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        c = (int(input_shape[-1]),)
        self.gamma = self.add_weight(name="gamma", shape=c, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=c, initializer="zeros")
        self.built = True

    def call(self, x):
        # The maths of `token_layer_norm`, with `var + eps` written as `var - (-eps)` (the same
        # IEEE result): TFLite then has a SUB, which the int8 recipe keeps float with the other
        # statistics, instead of an int8 scalar ADD that XNNPACK does not run
        # (docs/design.md#measured-decisions).
        mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var - (-self.epsilon)) * self.gamma + self.beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class RelPosAttention(keras.layers.Layer):
    """Head-major attention core on the qkv projection output (docs/method.md#transformer-layer).

    Input: ``(B, N, H * (2 * key_dim + value_dim))`` with N = ``side^2``, laid out head-major
    ``[q(key_dim) | k(key_dim) | v(value_dim)]`` per head. V is *replaced* by a 3x3 depthwise
    conv on the ``side x side`` map; ``softmax(q k^T / sqrt(key_dim) + bias) v``. Output
    ``(B, N, H * value_dim)`` (Hardswish and the projection follow as standard layers).

    Weights: ``dw_kernel`` ``[3, 3, H * value_dim, 1]``, ``attention_bias``
    ``[(2 * side - 1)^2, H]`` (the table cropped to this side).

    Args:
        num_heads: heads H.
        key_dim: per-head q/k dim.
        value_dim: per-head v dim.
        side: token-map side.
    """

    def __init__(self, num_heads, key_dim, value_dim, side, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim)
        self.side = int(side)

    def build(self, input_shape=None):
        h, dv, s = self.num_heads, self.value_dim, self.side
        self.dw_kernel = self.add_weight(
            name="dw_kernel", shape=(3, 3, h * dv, 1), initializer="glorot_uniform"
        )
        self.attention_bias = self.add_weight(
            name="attention_bias",
            shape=((2 * s - 1) ** 2, h),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self._index = relative_position_index(s, s)
        self.built = True

    def call(self, t):
        h, dq, dv, s = self.num_heads, self.key_dim, self.value_dim, self.side
        n = s * s
        t = tf.reshape(t, [-1, n, h, 2 * dq + dv])
        q = tf.transpose(t[..., :dq], [0, 2, 1, 3])
        k = tf.transpose(t[..., dq : 2 * dq], [0, 2, 1, 3])
        v = tf.reshape(t[..., 2 * dq :], [-1, s, s, h * dv])
        v = tf.pad(v, [[0, 0], [1, 1], [1, 1], [0, 0]])
        v = tf.nn.depthwise_conv2d(v, self.dw_kernel, [1, 1, 1, 1], "VALID")
        v = tf.transpose(tf.reshape(v, [-1, n, h, dv]), [0, 2, 1, 3])
        bias = tf.transpose(tf.gather(self.attention_bias, self._index), [2, 0, 1])
        attn = tf.matmul(q, k, transpose_b=True) * (dq**-0.5) + bias
        attn = tf.nn.softmax(attn, axis=-1)
        o = tf.transpose(tf.matmul(attn, v), [0, 2, 1, 3])
        return tf.reshape(o, [-1, n, h * dv])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.side * self.side, self.num_heads * self.value_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            value_dim=self.value_dim,
            side=self.side,
        )
        return config

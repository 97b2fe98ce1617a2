"""The static model's custom maths as plain TensorFlow functions.

Shared by the Keras 3 layers of extracted subnets (``static_layers.py``) and their tf_keras twins
in the QAT worker (``export/qat_worker.py``, a process that must not import Keras 3), so the two
graphs are the same by construction. Imports TensorFlow and NumPy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf


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


def token_layer_norm(x, gamma, beta, epsilon):
    """The official token x channel "LayerNorm" of ``(B, N, C)``
    (docs/method.md#layernorm-over-tokens-and-channels), with ``var + eps`` written as
    ``var - (-eps)`` (the same IEEE result): TFLite then has a SUB, which the int8 recipe keeps
    float with the other statistics, instead of an int8 scalar ADD that XNNPACK does not run
    (docs/design.md#measured-decisions)."""
    mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
    return (x - mean) * tf.math.rsqrt(var - (-epsilon)) * gamma + beta


def relpos_attention(layer, t):
    """Head-major attention on the qkv projection ``t`` of shape ``(B, N, H * (2 dq + dv))``:
    V replaced by a 3x3 depthwise conv on the ``side x side`` map, then
    ``softmax(q k^T / sqrt(dq) + bias) v``; returns ``(B, N, H * dv)``
    (docs/method.md#transformer-layer).

    ``layer`` holds the sizes (``num_heads``, ``key_dim``, ``value_dim``, ``side``), the weights
    (``dw_kernel`` ``[3, 3, H * dv, 1]``, ``attention_bias`` ``[(2 side - 1)^2, H]``) and the
    gather ``_index`` (``relative_position_index(side, side)``)."""
    h, dq, dv, s = layer.num_heads, layer.key_dim, layer.value_dim, layer.side
    n = s * s
    t = tf.reshape(t, [-1, n, h, 2 * dq + dv])
    q = tf.transpose(t[..., :dq], [0, 2, 1, 3])
    k = tf.transpose(t[..., dq : 2 * dq], [0, 2, 1, 3])
    v = tf.reshape(t[..., 2 * dq :], [-1, s, s, h * dv])
    v = tf.pad(v, [[0, 0], [1, 1], [1, 1], [0, 0]])
    v = tf.nn.depthwise_conv2d(v, layer.dw_kernel, [1, 1, 1, 1], "VALID")
    v = tf.transpose(tf.reshape(v, [-1, n, h, dv]), [0, 2, 1, 3])
    bias = tf.transpose(tf.gather(layer.attention_bias, layer._index), [2, 0, 1])
    attn = tf.matmul(q, k, transpose_b=True) * (dq**-0.5) + bias
    attn = tf.nn.softmax(attn, axis=-1)
    o = tf.transpose(tf.matmul(attn, v), [0, 2, 1, 3])
    return tf.reshape(o, [-1, n, h * dv])


class TokenLayerNormCore:
    """The body of the static token x channel LayerNorm layer, mixed into a ``Layer`` class of
    Keras 3 (``static_layers.TokenLayerNorm``) or of tf_keras (the QAT worker's twin).

    Args:
        epsilon: variance epsilon.
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        c = (int(input_shape[-1]),)
        self.gamma = self.add_weight(name="gamma", shape=c, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=c, initializer="zeros")
        self.built = True

    def call(self, x):
        return token_layer_norm(x, self.gamma, self.beta, self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


class RelPosAttentionCore:
    """The body of the static relative-position attention layer (``relpos_attention``), mixed
    into a ``Layer`` class of Keras 3 or tf_keras. ``bias_initializer`` is the attention bias
    table's initializer (the Keras 3 layer sets the official truncated normal).

    Args:
        num_heads: heads H.
        key_dim: per-head q/k dim.
        value_dim: per-head v dim.
        side: token-map side.
    """

    bias_initializer: Any = "zeros"

    def __init__(self, num_heads=1, key_dim=16, value_dim=16, side=1, **kwargs):
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
            name="attention_bias", shape=((2 * s - 1) ** 2, h), initializer=self.bias_initializer
        )
        self._index = relative_position_index(s, s)
        self.built = True

    def call(self, t):
        return relpos_attention(self, t)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "side": self.side,
        }

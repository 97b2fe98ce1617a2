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
from elasticvit_tf.layers.static_ops import (
    relative_position_index,
    relpos_attention,
    token_layer_norm,
)


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
        return token_layer_norm(x, self.gamma, self.beta, self.epsilon)

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
        return relpos_attention(self, t)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            value_dim=self.value_dim,
            side=self.side,
        )
        return config

"""Small registered custom layers for extracted (static) subnets.

Only what no standard Keras layer provides: the official token x channel "LayerNorm" and the
head-major attention with a depthwise-conv V and a relative position bias. Both use builtin
TFLite ops only (constant-index gather, reshape, transpose, batch matmul, softmax, depthwise
conv, pad).
"""

from __future__ import annotations

import keras

from elasticvit_tf.layers.dynamic_layers import LN_EPSILON
from elasticvit_tf.layers.static_ops import RelPosAttentionCore, TokenLayerNormCore


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class TokenLayerNorm(TokenLayerNormCore, keras.layers.Layer):
    """Official ElasticViT "LayerNorm" on ``(B, N, C)``: moments jointly over tokens and channels
    of each sample, then a per-channel affine (docs/method.md#layernorm-over-tokens-and-channels).

    Args:
        epsilon: variance epsilon.
    """

    def __init__(self, epsilon=LN_EPSILON, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class RelPosAttention(RelPosAttentionCore, keras.layers.Layer):
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

    bias_initializer = keras.initializers.TruncatedNormal(stddev=0.02)

    def __init__(self, num_heads, key_dim, value_dim, side, **kwargs):
        super().__init__(num_heads, key_dim, value_dim, side, **kwargs)

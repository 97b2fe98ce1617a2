"""Dynamic primitives and blocks: slicing semantics, BN/LN numerics, resize, configs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import assert_layer_roundtrip

from elasticvit_tf.layers import static_layers, static_ops
from elasticvit_tf.layers.dynamic_blocks import (
    ClassifierHead,
    FirstConv,
    MBConvBlock,
    TransformerLayer,
)
from elasticvit_tf.layers.dynamic_layers import (
    DynamicBatchNorm,
    DynamicConv2D,
    DynamicDense,
    DynamicDepthwiseConv2D,
    DynamicTokenLayerNorm,
    avg_pool_shortcut,
)
from elasticvit_tf.layers.resize import resize_images, torch_bicubic_resize


def _built(layer):
    layer.build(None)
    return layer


def test_dynamic_conv_uses_leading_slices():
    conv = _built(DynamicConv2D(6, 8, 3, strides=2, use_bias=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 4)).astype("float32")
    y = conv(x, cout=5).numpy()
    ref = (
        tf.nn.conv2d(
            np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]),
            conv.kernel.numpy()[:, :, :4, :5],
            2,
            "VALID",
        ).numpy()
        + conv.bias.numpy()[:5]
    )
    assert y.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_dynamic_depthwise_centre_crop_matches_keras():
    dw = _built(DynamicDepthwiseConv2D(6, 5, strides=2))
    x = np.random.default_rng(1).normal(size=(1, 6, 6, 4)).astype("float32")
    y = dw(x, kernel_size=3).numpy()
    ref_layer = keras.layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False)
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    ref_layer.build(xp.shape)
    ref_layer.set_weights([dw.kernel.numpy()[1:4, 1:4, :4, :]])
    np.testing.assert_allclose(y, ref_layer(xp).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="kernel_size=7"):
        dw(x, kernel_size=7)


def test_dynamic_dense_rank3():
    d = _built(DynamicDense(8, 10))
    x = np.random.default_rng(2).normal(size=(2, 3, 5)).astype("float32")
    y = d(x, out=4).numpy()
    ref = x @ d.kernel.numpy()[:5, :4] + d.bias.numpy()[:4]
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_batch_norm_training_updates_only_active_slice():
    bn = _built(DynamicBatchNorm(6))
    x = np.random.default_rng(3).normal(2.0, 3.0, size=(4, 3, 3, 4)).astype("float32")
    y = bn(x, training=True).numpy()
    flat = x.reshape(-1, 4)
    mean, var = flat.mean(0), flat.var(0)
    np.testing.assert_allclose(y.reshape(-1, 4), (flat - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    mm, mv = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    np.testing.assert_allclose(mm[:4], 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(mv[:4], 0.9 + 0.1 * flat.var(0, ddof=1), atol=1e-5)
    np.testing.assert_array_equal(mm[4:], 0.0)
    np.testing.assert_array_equal(mv[4:], 1.0)


def test_batch_norm_calibration_is_cumulative_average():
    # Hand-checked case: two batches of one channel-sliced BN; the result must be the mean of
    # the batch means and of the unbiased batch variances; the inactive channel is untouched.
    bn = _built(DynamicBatchNorm(3))
    bn.moving_mean.assign([5.0, 5.0, 5.0])
    bn.moving_variance.assign([7.0, 7.0, 7.0])
    b1 = np.array([[1.0, 2.0], [3.0, 6.0]], "float32")  # means (2, 4), unbiased var (2, 8)
    b2 = np.array([[0.0, 0.0], [2.0, 4.0], [4.0, 8.0]], "float32")  # (2, 4), (4, 16)
    f = tf.Variable(1.0)
    bn.calibration_factor = f
    for i, b in enumerate((b1, b2)):
        f.assign(1.0 / (i + 1))
        bn(b, training=True)
    np.testing.assert_allclose(bn.moving_mean.numpy(), [2.0, 4.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), [3.0, 12.0, 7.0], atol=1e-6)


def test_token_layer_norm_over_tokens_and_channels():
    ln = _built(DynamicTokenLayerNorm(6))
    ln.gamma.assign(np.arange(1, 7, dtype="float32"))
    ln.beta.assign(np.full(6, 0.5, "float32"))
    x = np.random.default_rng(4).normal(size=(2, 5, 4)).astype("float32")
    y = ln(x).numpy()
    m = x.mean(axis=(1, 2), keepdims=True)
    v = x.var(axis=(1, 2), keepdims=True)
    ref = (x - m) / np.sqrt(v + 1e-5) * np.arange(1, 5) + 0.5
    np.testing.assert_allclose(y, ref, atol=1e-5)
    static = static_layers.TokenLayerNorm()
    static.build(x.shape)
    static.set_weights([np.arange(1, 5, dtype="float32"), np.full(4, 0.5, "float32")])
    np.testing.assert_allclose(static(x).numpy(), ref, atol=1e-5)


def test_avg_pool_shortcut_odd_side_count_include_pad():
    x = np.arange(25, dtype="float32").reshape(1, 5, 5, 1)
    y = avg_pool_shortcut(x).numpy()[0, :, :, 0]
    # PyTorch AvgPool2d(2, 2, padding=1, count_include_pad=True) on 5x5 -> 3x3
    xp = np.pad(x[0, :, :, 0], 1)
    ref = np.array(
        [[xp[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].sum() / 4 for j in range(3)] for i in range(3)]
    )
    np.testing.assert_allclose(y, ref, atol=1e-6)
    even = avg_pool_shortcut(np.ones((1, 4, 4, 1), "float32")).numpy()
    np.testing.assert_allclose(even, np.ones((1, 2, 2, 1)))


def test_relative_position_index():
    idx = static_ops.relative_position_index(2, 3)
    # R=3: (dy + 2) * 5 + (dx + 2); tokens (0,0),(0,1),(1,0),(1,1)
    assert idx[0, 0] == 12 and idx[0, 1] == 11 and idx[0, 3] == 6 and idx[3, 0] == 18
    with pytest.raises(ValueError, match="side=4"):
        static_ops.relative_position_index(4, 3)


def test_torch_bicubic_golden_and_identity():
    x = np.arange(4, dtype="float32").reshape(1, 1, 4, 1) * np.ones((1, 4, 1, 1), "float32")
    y = torch_bicubic_resize(x, 2).numpy()[0, 0, :, 0]
    # hand-computed: a=-0.75, t=0.5 taps (-0.09375, 0.59375, 0.59375, -0.09375), clamped borders
    np.testing.assert_allclose(y, [0.40625, 2.59375], atol=1e-6)
    z = np.random.default_rng(5).normal(size=(2, 6, 6, 3)).astype("float32")
    for method in ("bicubic", "torch_bicubic", "bilinear"):
        np.testing.assert_array_equal(resize_images(z, 6, method).numpy(), z)
        assert resize_images(z, tf.constant(9), method).shape == (2, 9, 9, 3)
    with pytest.raises(ValueError, match="'nearest'"):
        resize_images(z, 4, "nearest")


@pytest.mark.parametrize(
    "layer",
    [
        DynamicConv2D(4, 8, 3, strides=2, use_bias=True),
        DynamicDepthwiseConv2D(8, 5, 2),
        DynamicDense(4, 6, use_bias=False),
        DynamicBatchNorm(8, zero_init=True),
        DynamicTokenLayerNorm(8),
        FirstConv(8),
        MBConvBlock(8, 16, 4, (3, 5), strides=2, se=True, may_change_width=True),
        TransformerLayer(32, 3, 2, 4, transition=True, transition_strides=2),
        ClassifierHead(32, 4, 64, 10),
        static_layers.TokenLayerNorm(),
        static_layers.RelPosAttention(2, 16, 32, 3),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_roundtrip(layer):
    assert_layer_roundtrip(layer)


def test_mbconv_zero_init_last_bn_for_stride_one():
    blk = _built(MBConvBlock(8, 8, 2, (3,), strides=1))
    assert np.all(blk.pwl_bn.gamma.numpy() == 0.0)
    blk2 = _built(MBConvBlock(8, 8, 2, (3,), strides=2))
    assert np.all(blk2.pwl_bn.gamma.numpy() == 1.0)

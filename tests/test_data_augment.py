"""Tests for elasticvit_tf.data_augment: exact geometry of crops/shifts/flips, RandAugment-lite,
normalisation, determinism under a seed."""

import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf import data_augment as aug

MEAN = np.array(aug.IMAGENET_MEAN, np.float32)
STD = np.array(aug.IMAGENET_STD, np.float32)
SEED = tf.constant([3, 4], tf.int64)


def _denorm(x):
    return (np.asarray(x) * STD + MEAN) * 255.0


def test_normalize_images_tiles_grey_and_uses_imagenet_stats():
    x = np.full((2, 3, 3, 1), 51, np.uint8)  # 0.2
    out = aug.normalize_images(x).numpy()
    assert out.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(out[0, 0, 0], (0.2 - MEAN) / STD, rtol=1e-6)
    rgb = aug.normalize_images(np.zeros((1, 1, 1, 3), np.float32)).numpy()
    np.testing.assert_allclose(rgb[0, 0, 0], -MEAN / STD, rtol=1e-6)


def test_batch_eval_none_is_identity_at_native_size():
    x = np.random.default_rng(0).integers(0, 256, (4, 10, 10, 1)).astype(np.uint8)
    out = aug.preprocess_batch(tf.constant(x), "none", False, SEED, 10, 1, True)
    np.testing.assert_allclose(_denorm(out)[..., 0], x[..., 0], atol=1e-3)


def test_batch_light_training_shifts_and_flips_exactly():
    rng = np.random.default_rng(1)
    x = rng.integers(1, 256, (64, 8, 8, 1)).astype(np.uint8)  # no zero pixels
    out = _denorm(aug.preprocess_batch(tf.constant(x), "light", True, SEED, 8, 2, True))[..., 0]
    flips, shifts = set(), set()
    for src, img in zip(x[..., 0].astype(np.float32), out):
        found = None
        for f in (0, 1):
            p = np.pad(src[:, ::-1] if f else src, 2)
            for dy in range(5):
                for dx in range(5):
                    if np.allclose(p[dy : dy + 8, dx : dx + 8], img, atol=1e-3):
                        found = (f, dy, dx)
        assert found is not None
        flips.add(found[0])
        shifts.add(found[1:])
    assert flips == {0, 1} and len(shifts) >= 10


def test_batch_imagenet_eval_centre_crop_keeps_centre():
    # A centred bright square covering the middle 50%: the 0.875 centre crop resized back keeps
    # it centred and symmetric.
    x = np.zeros((1, 16, 16, 3), np.uint8)
    x[:, 4:12, 4:12] = 200
    out = _denorm(aug.preprocess_batch(tf.constant(x), "imagenet", False, SEED, 16, 1, True))
    assert out.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(out[0, 8, 8], 200, atol=0.5)
    np.testing.assert_allclose(out[0, 0, 0], 0, atol=0.5)
    np.testing.assert_allclose(out[0], out[0, ::-1, ::-1], atol=1e-3)


def test_batch_imagenet_training_no_extrapolated_zeros():
    """RandomResizedCrop never samples outside the image (no black columns from float error)."""
    x = np.full((128, 28, 28, 1), 255, np.uint8)
    out = _denorm(aug.preprocess_batch(tf.constant(x), "imagenet", True, SEED, 28, 4, True))
    # RandAugment may invert/solarize a whole image, but never a single row or column.
    per_image = out[..., 0].reshape(128, -1)
    assert np.all(np.ptp(per_image, axis=1) < 1e-2)


def test_example_imagenet_eval_centre_crop_geometry():
    img = np.random.default_rng(2).integers(0, 256, (40, 20, 3)).astype(np.uint8)
    out = aug.preprocess_example(tf.constant(img), "imagenet", False, SEED, 18, 2, True)
    # shorter side 20 -> crop 18 (0.875 * 20 = 17.5, rounded half to even), offsets (11, 1).
    np.testing.assert_allclose(out.numpy(), img[11:29, 1:19].astype(np.float32), atol=1e-2)


@pytest.mark.parametrize("mode", ["imagenet", "light", "none"])
def test_example_training_shapes_and_determinism(mode):
    img = tf.constant(np.random.default_rng(3).integers(0, 256, (37, 53, 3)).astype(np.uint8))
    a = aug.preprocess_example(img, mode, True, SEED, 24, 3, True).numpy()
    b = aug.preprocess_example(img, mode, True, SEED, 24, 3, True).numpy()
    c = aug.preprocess_example(img, mode, True, tf.constant([9, 9], tf.int64), 24, 3, True).numpy()
    assert a.shape == (24, 24, 3) and a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    if mode != "none":
        assert not np.array_equal(a, c)


def test_rand_augment_ops_and_probability():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (600, 6, 6, 3)).astype(np.float32)
    out = aug.rand_augment_batch(tf.constant(x), SEED).numpy()
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    unchanged = np.all(out == x, axis=(1, 2, 3))
    assert 0.4 < unchanged.mean() < 0.6  # applied with probability 0.5
    inverted = np.all(out == 255 - x, axis=(1, 2, 3))
    posterized = np.all(out == np.floor(x / 16) * 16, axis=(1, 2, 3))
    assert 10 < inverted.sum() < 70 and 10 < posterized.sum() < 70  # ~600 / 2 / 8 each
    np.testing.assert_array_equal(out, aug.rand_augment_batch(tf.constant(x), SEED).numpy())

"""Image preprocessing for `elasticvit_tf.data`: resizing, crops, flips, RandAugment-lite and
ImageNet normalisation (docs/method.md#data-and-augmentation), all stateless-random so pipelines are
deterministic under a seed.

Two entry points: `preprocess_batch` for a batch of same-size images (in-memory sources,
vectorised), `preprocess_example` for one image of any size (files, TFDS).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# docs/method.md#data-and-augmentation: resize shorter side to S / 0.875, centre crop S
EVAL_CROP_FRACTION = 0.875
# RandomResizedCrop ranges (docs/method.md#data-and-augmentation, timm defaults).
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# RandAugment as in docs/method.md#data-and-augmentation ("rand-n1-m1-mstd0.5-inc1"): one op,
# magnitude ~ N(1, 0.5) of 10, applied with probability 0.5. Only the cheap photometric ops of the
# "increasing" set.
RAND_AUGMENT_OPS = (
    "auto_contrast",
    "invert",
    "posterize",
    "solarize",
    "solarize_add",
    "color",
    "contrast",
    "brightness",
)
RAND_AUGMENT_MAGNITUDE = (1.0, 0.5)  # mean, std (out of 10)
RAND_AUGMENT_PROB = 0.5


def normalize_images(images):
    """uint8-range images [..., C] -> float32 normalised with ImageNet mean/std, 3 channels."""
    x = tf.cast(images, tf.float32) / 255.0
    if x.shape[-1] == 1:
        x = tf.tile(x, [1] * (len(x.shape) - 1) + [3])
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (x - mean) / std


def _imagenet_boxes(training, seed, n, h, w):
    """Crop boxes (``tf.image.crop_and_resize`` convention) for a batch of same-size images:
    RandomResizedCrop when training, else the centre crop of 0.875 of the shorter side."""
    hf, wf = float(h - 1), float(w - 1)
    if training:
        u = tf.random.stateless_uniform([n, 4], seed)
        area = (RRC_SCALE[0] + u[:, 0] * (RRC_SCALE[1] - RRC_SCALE[0])) * h * w
        log_r = np.log(RRC_RATIO[0]) + u[:, 1] * (np.log(RRC_RATIO[1]) - np.log(RRC_RATIO[0]))
        ratio = tf.exp(log_r)
        cw = tf.minimum(tf.sqrt(area * ratio), float(w))
        ch = tf.minimum(tf.sqrt(area / ratio), float(h))
        oy, ox = u[:, 2] * (h - ch), u[:, 3] * (w - cw)
    else:
        side = EVAL_CROP_FRACTION * min(h, w)
        zeros = tf.zeros([n], tf.float32)
        oy, ox = zeros + (h - side) / 2.0, zeros + (w - side) / 2.0
        ch = cw = zeros + side
    return tf.stack([oy / hf, ox / wf, (oy + ch - 1.0) / hf, (ox + cw - 1.0) / wf], axis=-1)


def rand_augment_batch(x, seed):
    """One random photometric RandAugment op per image (or none, with prob 1 - 0.5).

    ``x``: float32 [B, H, W, C] in the 0..255 range; returns the same shape and range.
    """
    n, channels = tf.shape(x)[0], int(x.shape[-1])
    u = tf.random.stateless_uniform([n, 3], seed)
    normal = tf.random.stateless_normal([n], tf.random.experimental.stateless_fold_in(seed, 1))
    mean_m, std_m = RAND_AUGMENT_MAGNITUDE
    m = tf.clip_by_value(mean_m + std_m * normal, 0.0, 10.0)[:, None, None, None] / 10.0
    sign = tf.where(u[:, 2] < 0.5, -1.0, 1.0)[:, None, None, None]
    factor = 1.0 + sign * 0.9 * m  # "increasing" enhance ops: 1 +- 0.9 m
    if channels == 3:
        grey = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    else:
        grey = x
    lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    bits = 4.0 - tf.floor(m * 4.0)
    step = tf.pow(2.0, 8.0 - bits)
    threshold = 256.0 - m * 256.0
    candidates = [
        tf.where(hi > lo, (x - lo) * 255.0 / tf.maximum(hi - lo, 1e-3), x),  # auto_contrast
        255.0 - x,  # invert
        tf.floor(x / step) * step,  # posterize
        tf.where(x >= threshold, 255.0 - x, x),  # solarize
        tf.where(x < 128.0, tf.minimum(x + m * 110.0, 255.0), x),  # solarize_add
        grey + factor * (x - grey),  # color
        tf.reduce_mean(grey, axis=[1, 2], keepdims=True) * (1.0 - factor) + factor * x,  # contrast
        x * factor,  # brightness
    ]
    op = tf.minimum(tf.cast(u[:, 0] * len(candidates), tf.int32), len(candidates) - 1)
    apply = u[:, 1] < RAND_AUGMENT_PROB
    choice = tf.where(apply, op + 1, 0)  # 0 = unchanged
    stacked = tf.stack([x] + candidates, axis=1)  # [B, 1 + ops, H, W, C]
    out = tf.gather(stacked, choice, axis=1, batch_dims=1)
    return tf.clip_by_value(out, 0.0, 255.0)


def _random_flip_batch(x, seed):
    do_flip = tf.random.stateless_uniform([tf.shape(x)[0]], seed) < 0.5
    return tf.where(do_flip[:, None, None, None], tf.reverse(x, axis=[2]), x)


def _shift_batch(x, seed, pad):
    """Zero-pads by ``pad`` and takes a random same-size crop per image (integer shifts)."""
    n, h, w = tf.shape(x)[0], int(x.shape[1]), int(x.shape[2])
    offsets = tf.random.stateless_uniform([n, 2], seed, 0, 2 * pad + 1, dtype=tf.int32)
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[:, :1] + tf.range(h)[None, :]
    cols = offsets[:, 1:] + tf.range(w)[None, :]
    x = tf.gather(x, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def preprocess_batch(images, mode, training, seed, size, pad, flip):
    """uint8 [B, H, W, C] of one fixed size -> float32 [B, S, S, 3] normalised."""
    x = tf.cast(images, tf.float32)
    h, w = int(images.shape[1]), int(images.shape[2])
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if mode == "imagenet":
        n = tf.shape(x)[0]
        boxes = _imagenet_boxes(training, seeds[0], n, h, w)
        # NOTE: sample positions on the last row/column can land a few ulp outside the image,
        # where crop_and_resize extrapolates; a 1-pixel edge copy makes those samples exact.
        scale = tf.constant([h - 1, w - 1, h - 1, w - 1], tf.float32)
        boxes = (boxes * scale + 1.0) / tf.constant([h + 1, w + 1, h + 1, w + 1], tf.float32)
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        x = tf.image.crop_and_resize(x, boxes, tf.range(n), (size, size), method="bilinear")
    else:
        if training and mode == "light":
            x = _shift_batch(x, seeds[0], pad)
        if (h, w) != (size, size):
            x = tf.image.resize(x, (size, size), method="bilinear")
    if training and flip and mode in ("light", "imagenet"):
        x = _random_flip_batch(x, seeds[1])
    if training and mode == "imagenet":
        x = rand_augment_batch(x, seeds[2])
    return normalize_images(x)


def preprocess_example(image, mode, training, seed, size, pad, flip):
    """One uint8 [H, W, C] image of any size -> float32 [S, S, C] in the 0..255 range.

    Geometric steps only; batch the results and call `finish_batch`.
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    channels = image.shape[-1]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if training and mode == "imagenet":
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=RRC_RATIO,
            area_range=RRC_SCALE,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, crop_size)
    elif mode == "imagenet":
        side = tf.cast(
            tf.round(EVAL_CROP_FRACTION * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32
        )
        side = tf.maximum(side, 1)
        image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
    x = tf.image.resize(image, (size, size), method="bicubic", antialias=True)
    x = tf.clip_by_value(x, 0.0, 255.0)
    x.set_shape([size, size, channels])  # slicing by a sampled box loses the static shape
    if training and mode == "light":
        x = tf.image.pad_to_bounding_box(x, pad, pad, size + 2 * pad, size + 2 * pad)
        x = tf.image.stateless_random_crop(x, [size, size, tf.shape(x)[-1]], seed=seeds[1])
    if training and flip and mode in ("light", "imagenet"):
        x = tf.image.stateless_random_flip_left_right(x, seed=seeds[2])
    return x


def finish_batch(x, mode, training, seed):
    """Batch of `preprocess_example` outputs -> normalised: RandAugment-lite (imagenet
    training; run per batch, where it is vectorised) and ImageNet normalisation."""
    if training and mode == "imagenet":
        x = rand_augment_batch(x, seed)
    return normalize_images(x)


# ---------------------------------------------------------------------------------------------
# Datasets

"""In-model resize of NHWC images to a resolution held in a tensor
(docs/method.md#elastic-resolution, docs/design.md#resize-and-bn-recalibration)."""

from __future__ import annotations

import tensorflow as tf

RESIZE_METHODS = ("bicubic", "torch_bicubic", "bilinear")
_TORCH_A = -0.75


def _torch_cubic_matrix(in_size, out_size):
    """``[out, in]`` interpolation matrix of PyTorch ``interpolate(mode="bicubic",
    align_corners=False)`` without antialias: half-pixel centres, a = -0.75, unclamped source
    coordinate, border-clamped taps."""
    in_f = tf.cast(in_size, tf.float32)
    scale = in_f / tf.cast(out_size, tf.float32)
    src = (tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale - 0.5
    fl = tf.floor(src)
    t = src - fl
    a = _TORCH_A

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
    base = tf.cast(fl, tf.int32)
    m = 0.0
    for k, w in enumerate(weights):
        idx = tf.clip_by_value(base - 1 + k, 0, in_size - 1)
        m = m + w[:, None] * tf.one_hot(idx, in_size, dtype=tf.float32)
    return m


def _apply_rows(x, m):
    """Contracts axis 1 of NHWC ``x`` with ``m [out, in]`` -> ``(B, out, W, C)``."""
    xt = tf.transpose(x, [0, 2, 3, 1])  # B, W, C, H
    shp = tf.shape(xt)
    y = tf.matmul(tf.reshape(xt, [-1, shp[3]]), m, transpose_b=True)
    y = tf.reshape(y, [shp[0], shp[1], shp[2], tf.shape(m)[0]])
    return tf.transpose(y, [0, 3, 1, 2])


def torch_bicubic_resize(images, size):
    """Bicubic resize matching PyTorch (no antialias) to ``size x size``."""
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    y = _apply_rows(images, _torch_cubic_matrix(h, size))
    y = tf.transpose(y, [0, 2, 1, 3])
    y = _apply_rows(y, _torch_cubic_matrix(w, size))
    return tf.transpose(y, [0, 2, 1, 3])


def resize_images(images, size, method="bicubic"):
    """Resizes NHWC ``images`` to ``size x size`` (``size``: int or int32 tensor); identity when
    the input already has that size."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r}; expected one of {list(RESIZE_METHODS)}")
    size = tf.convert_to_tensor(size, tf.int32)
    h, w = tf.shape(images)[1], tf.shape(images)[2]

    def do_resize():
        if method == "torch_bicubic":
            y = torch_bicubic_resize(images, size)
        else:
            y = tf.image.resize(images, tf.stack([size, size]), method=method)
        return tf.cast(y, images.dtype)

    same = tf.logical_and(tf.equal(h, size), tf.equal(w, size))
    return tf.cond(same, lambda: tf.identity(images), do_resize)

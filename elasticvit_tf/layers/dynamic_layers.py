"""Dynamic (elastic) primitives: max-size variables sliced with widths known only in the graph.

Every layer stores one variable per super-weight at its maximal shape and, at call time, uses
the *leading* slice whose size comes from the input tensor's channel dimension (input widths)
or from an int32 scalar tensor argument (output widths) read from the supernet's arch
variables. Nothing here depends on Python-level widths, so one traced graph serves every
subnet (docs/design.md#one-traced-graph). Kernel sizes are Python ints: elastic kernels are selected
by the blocks with ``tf.switch_case`` over the (few) kernel choices, each branch using a static
centre crop.

Super-weight layouts (Keras convention, docs/method.md#super-weight-layouts):
  * conv kernel ``[kh, kw, in, out]`` (PyTorch ``[out, in, kh, kw]`` transposed (2, 3, 1, 0));
  * depthwise kernel ``[kh, kw, C, 1]`` (PyTorch ``[C, 1, kh, kw]`` transposed (2, 3, 0, 1));
  * dense kernel ``[in, out]`` (PyTorch Linear ``[out, in]`` transposed).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from elasticvit_tf.layers.static_ops import token_layer_norm

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5
LN_EPSILON = 1e-5


def hswish(x):
    """Hardswish, x * relu6(x + 3) / 6 (``keras.activations.hard_silu``)."""
    return keras.activations.hard_silu(x)


def symmetric_pad(x, pad: int):
    """Zero-pads H and W by ``pad`` on every side (PyTorch ``padding=pad``)."""
    if pad == 0:
        return x
    return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])


def avg_pool_shortcut(x):
    """2x2/2 average pool of the stride-2 shortcut (docs/method.md#padding-and-odd-sides).

    Odd sides: PyTorch pads 1 on every side with ``count_include_pad=True``; the trailing pad is
    never covered, so this equals zero-padding one row on top and one column on the left, then a
    VALID 2x2/2 average with divisor 4. Even sides: no padding. Works on dynamic sides.
    """
    h = tf.shape(x)[1]
    w = tf.shape(x)[2]
    x = tf.pad(x, [[0, 0], [h % 2, 0], [w % 2, 0], [0, 0]])
    return tf.nn.avg_pool2d(x, 2, 2, "VALID")


def _kaiming_uniform(fan_in):
    # PyTorch default for Conv/Linear: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
    limit = 1.0 / max(float(fan_in), 1.0) ** 0.5
    return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class DynamicConv2D(keras.layers.Layer):
    """Conv with a ``[k, k, max_in, max_out]`` super-kernel; uses ``[:, :, :cin, :cout]``.

    ``cin`` is the input's channel count; ``cout`` (int32 scalar) is passed at call time.
    Symmetric zero padding ``k // 2`` then a VALID convolution (never ``"same"``).

    Args:
        max_in: maximal input channels.
        max_out: maximal output channels.
        kernel_size: (static) square kernel size.
        strides: stride.
        use_bias: whether a ``[max_out]`` bias is used (sliced ``[:cout]``).
    """

    def __init__(self, max_in, max_out, kernel_size=1, strides=1, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.max_in = int(max_in)
        self.max_out = int(max_out)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.use_bias = bool(use_bias)

    def build(self, input_shape=None):
        fan_in = self.max_in * self.kernel_size**2
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k, k, self.max_in, self.max_out),
            initializer=_kaiming_uniform(fan_in),
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.max_out,), initializer=_kaiming_uniform(fan_in)
            )
        self.built = True

    def call(self, x, cout):
        cin = tf.shape(x)[-1]
        w = self.kernel[:, :, :cin, :cout]
        if self.kernel_size == 1 and self.strides == 1:
            y = tf.nn.conv2d(x, w, 1, "VALID")
        else:
            y = tf.nn.conv2d(symmetric_pad(x, self.kernel_size // 2), w, self.strides, "VALID")
        if self.bias is not None:
            y = y + self.bias[:cout]
        return y

    def get_config(self):
        config = super().get_config()
        config.update(
            max_in=self.max_in,
            max_out=self.max_out,
            kernel_size=self.kernel_size,
            strides=self.strides,
            use_bias=self.use_bias,
        )
        return config


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class DynamicDepthwiseConv2D(keras.layers.Layer):
    """Depthwise conv, super-kernel ``[K, K, max_channels, 1]``; kernel k = centre crop.

    Channels = the input's channel count (leading slice). ``kernel_size`` at call time is a
    Python int <= K (the blocks branch over the kernel choices). No bias.

    Args:
        max_channels: maximal channels.
        max_kernel: super-kernel size K.
        strides: stride.
    """

    def __init__(self, max_channels, max_kernel=5, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.max_channels = int(max_channels)
        self.max_kernel = int(max_kernel)
        self.strides = int(strides)

    def build(self, input_shape=None):
        k = self.max_kernel
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k, k, self.max_channels, 1),
            initializer=_kaiming_uniform(k * k),
        )
        self.built = True

    def sliced_kernel(self, kernel_size, channels):
        off = (self.max_kernel - kernel_size) // 2
        return self.kernel[off : off + kernel_size, off : off + kernel_size, :channels, :]

    def call(self, x, kernel_size=None):
        """``kernel_size``: Python int or int32 scalar tensor (odd, <= ``max_kernel``); a
        tensor gives a dynamic centre crop and padding (no branching, one graph)."""
        if kernel_size is None:
            kernel_size = self.max_kernel
        if isinstance(kernel_size, int) and (
            kernel_size > self.max_kernel or kernel_size % 2 == 0 or kernel_size < 1
        ):
            raise ValueError(
                f"{self.name}: kernel_size={kernel_size}; expected an odd size <= "
                f"{self.max_kernel}"
            )
        w = self.sliced_kernel(kernel_size, tf.shape(x)[-1])
        p = kernel_size // 2
        x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        s = self.strides
        return tf.nn.depthwise_conv2d(x, w, [1, s, s, 1], "VALID")

    def get_config(self):
        config = super().get_config()
        config.update(
            max_channels=self.max_channels, max_kernel=self.max_kernel, strides=self.strides
        )
        return config


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class DynamicDense(keras.layers.Layer):
    """Linear layer with a ``[max_in, max_out]`` kernel; uses ``[:in, :out]`` (+ ``bias[:out]``).

    Input ``(..., in)`` with ``in`` read from the tensor; ``out`` (int32 scalar) at call time.
    Implemented as reshape + ``tf.matmul`` (never ``tf.einsum`` on dynamic dims).

    Args:
        max_in: maximal input features.
        max_out: maximal output features.
        use_bias: whether a bias is used.
    """

    def __init__(self, max_in, max_out, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.max_in = int(max_in)
        self.max_out = int(max_out)
        self.use_bias = bool(use_bias)

    def build(self, input_shape=None):
        init = _kaiming_uniform(self.max_in)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.max_in, self.max_out), initializer=init
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.max_out,), initializer=init)
        self.built = True

    def call(self, x, out):
        cin = tf.shape(x)[-1]
        return self.apply_kernel(
            x, self.kernel[:cin, :out], self.bias[:out] if self.use_bias else None
        )

    @staticmethod
    def apply_kernel(x, w, b=None):
        rank = x.shape.rank
        if rank == 2:
            y = tf.matmul(x, w)
        else:
            lead = tf.shape(x)[:-1]
            y = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), w)
            y = tf.reshape(y, tf.concat([lead, tf.shape(w)[-1:]], 0))
        if b is not None:
            y = y + b
        return y

    def get_config(self):
        config = super().get_config()
        config.update(max_in=self.max_in, max_out=self.max_out, use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class DynamicBatchNorm(keras.layers.Layer):
    """BatchNorm over the last axis with full-size gamma/beta/moving stats; uses ``[:C]``.

    ``C`` is the input's channel count. Training: normalises with the biased batch variance
    and updates the moving stats of the active slice only (momentum 0.9, moving variance from
    the *unbiased* batch variance, as PyTorch does); inactive entries keep their values.

    Calibration (``calibration_factor`` set to a scalar float variable ``f`` by
    ``recalibrate_bn``): same normalisation, but ``stat <- stat + f * (batch_stat - stat)``;
    with ``f = 1 / (i + 1)`` on batch ``i`` the stats are the cumulative average of the batch
    means and unbiased batch variances (docs/method.md#bn-recalibration), reset by the first batch.

    Args:
        max_channels: maximal channels.
        momentum: Keras-convention momentum (0.9 == PyTorch 0.1).
        epsilon: variance epsilon.
        zero_init: initialise gamma to 0 (last BN of stride-1 residual blocks,
            docs/method.md#initialisation).
    """

    def __init__(
        self, max_channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, zero_init=False, **kwargs
    ):
        kwargs.setdefault("autocast", False)  # float32 statistics under mixed precision
        super().__init__(**kwargs)
        self.max_channels = int(max_channels)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.zero_init = bool(zero_init)
        self.calibration_factor = None

    def build(self, input_shape=None):
        c = (self.max_channels,)
        self.gamma = self.add_weight(
            name="gamma", shape=c, initializer="zeros" if self.zero_init else "ones"
        )
        self.beta = self.add_weight(name="beta", shape=c, initializer="zeros")
        # NOTE: aggregation "none" like keras.layers.BatchNormalization: under MirroredStrategy
        # each replica updates its own copy (plain per-device BN, docs/method.md#blocks); "mean"
        # would need a merge_call, which is not allowed inside the depth tf.cond branches.
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=c, initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=c,
            initializer="ones",
            trainable=False,
        )
        self.built = True

    def _update(self, var, value, c, factor):
        old = var.value
        head = old[:c]
        new = tf.concat([head + factor * (value - head), old[c:]], axis=0)
        var.assign(new)

    def call(self, x, training=False):
        dtype = x.dtype  # bfloat16/float16 under mixed precision: normalise in float32
        x = tf.cast(x, tf.float32)
        c = tf.shape(x)[-1]
        axes = list(range(x.shape.rank - 1))
        if training:
            mean, var = tf.nn.moments(x, axes)
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
            unbiased = var * n / tf.maximum(n - 1.0, 1.0)
            if self.calibration_factor is not None:
                f = tf.cast(self.calibration_factor, x.dtype)
            else:
                f = tf.constant(1.0 - self.momentum, x.dtype)
            self._update(self.moving_mean, tf.stop_gradient(mean), c, f)
            self._update(self.moving_variance, tf.stop_gradient(unbiased), c, f)
        else:
            mean = self.moving_mean[:c]
            var = self.moving_variance[:c]
        inv = tf.math.rsqrt(var + self.epsilon) * self.gamma[:c]
        return tf.cast((x - mean) * inv + self.beta[:c], dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            max_channels=self.max_channels,
            momentum=self.momentum,
            epsilon=self.epsilon,
            zero_init=self.zero_init,
        )
        return config


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class DynamicTokenLayerNorm(keras.layers.Layer):
    """Official LayerNorm quirk on ``(B, N, C)`` tokens with ``[max_channels]`` gamma/beta.

    Args:
        max_channels: maximal channels.
        epsilon: variance epsilon.
    """

    def __init__(self, max_channels, epsilon=LN_EPSILON, **kwargs):
        kwargs.setdefault("autocast", False)  # float32 statistics under mixed precision
        super().__init__(**kwargs)
        self.max_channels = int(max_channels)
        self.epsilon = float(epsilon)

    def build(self, input_shape=None):
        c = (self.max_channels,)
        self.gamma = self.add_weight(name="gamma", shape=c, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=c, initializer="zeros")
        self.built = True

    def call(self, x):
        c = tf.shape(x)[-1]
        y = token_layer_norm(tf.cast(x, tf.float32), self.gamma[:c], self.beta[:c], self.epsilon)
        return tf.cast(y, x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(max_channels=self.max_channels, epsilon=self.epsilon)
        return config

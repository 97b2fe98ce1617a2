"""Dynamic ElasticViT blocks (docs/method.md#blocks) and their static twins.

Each block owns max-size variables (through the primitives of ``dynamic_layers``) and runs any
subnet with widths/ratios given as int32 scalar tensors and kernels selected by
``tf.switch_case``. ``to_static(x, ...)`` applies the block's static twin to a Keras functional
tensor with Python-int sizes, building standard Keras layers (plus the two custom layers of
``static_layers``) and copying the active weight slices; ``static_config(...)`` describes it.

Variable paths (stable, used by the official-checkpoint converter), e.g.
``elastic_supernet/stage2/layer0/transition/pw/kernel``; see ``ElasticSupernet`` for the map.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from elasticvit_tf.layers import static_layers, static_ops
from elasticvit_tf.layers.dynamic_layers import (
    BN_EPSILON,
    BN_MOMENTUM,
    DynamicBatchNorm,
    DynamicConv2D,
    DynamicDense,
    DynamicDepthwiseConv2D,
    DynamicTokenLayerNorm,
    avg_pool_shortcut,
    hswish,
)

L = keras.layers


# --------------------------------------------------------------------- static-twin helpers
def _np(v):
    return np.asarray(keras.ops.convert_to_numpy(v))


def static_bn(x, bn, c, name):
    layer = L.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)
    y = layer(x)
    layer.set_weights(
        [_np(bn.gamma)[:c], _np(bn.beta)[:c], _np(bn.moving_mean)[:c], _np(bn.moving_variance)[:c]]
    )
    return y


def static_conv(x, conv, cout, name, activation=None):
    cin = int(x.shape[-1])
    k, s = conv.kernel_size, conv.strides
    if k > 1:
        x = L.ZeroPadding2D(k // 2, name=name + "_pad")(x)
    layer = L.Conv2D(
        cout,
        k,
        strides=s,
        padding="valid",
        use_bias=conv.use_bias,
        activation=activation,
        name=name,
    )
    y = layer(x)
    w = [_np(conv.kernel)[:, :, :cin, :cout]]
    if conv.use_bias:
        w.append(_np(conv.bias)[:cout])
    layer.set_weights(w)
    return y


def static_dwconv(x, dw, k, name):
    c = int(x.shape[-1])
    x = L.ZeroPadding2D(k // 2, name=name + "_pad")(x)
    layer = L.DepthwiseConv2D(k, strides=dw.strides, padding="valid", use_bias=False, name=name)
    y = layer(x)
    off = (dw.max_kernel - k) // 2
    layer.set_weights([_np(dw.kernel)[off : off + k, off : off + k, :c, :]])
    return y


def static_dense(x, dense, out, name, activation=None, kernel=None):
    cin = int(x.shape[-1])
    layer = L.Dense(out, use_bias=dense.use_bias, activation=activation, name=name)
    y = layer(x)
    w = [_np(dense.kernel)[:cin, :out] if kernel is None else kernel]
    if dense.use_bias:
        w.append(_np(dense.bias)[:out])
    layer.set_weights(w)
    return y


def static_token_ln(x, ln, name):
    c = int(x.shape[-1])
    layer = static_layers.TokenLayerNorm(epsilon=ln.epsilon, name=name)
    y = layer(x)
    layer.set_weights([_np(ln.gamma)[:c], _np(ln.beta)[:c]])
    return y


def avg_pool_as_dwconv(x, name):
    """2x2 / stride 2 average pooling as a depthwise conv with weights 1/4 (the same sums
    scaled by an exact power of two): XNNPACK runs int8 depthwise convs, not int8 average
    pooling (docs/design.md#measured-decisions)."""
    c = int(x.shape[-1])
    layer = L.DepthwiseConv2D(
        2, strides=2, padding="valid", use_bias=False, trainable=False, name=name
    )
    y = layer(x)
    layer.set_weights([np.full((2, 2, c, 1), 0.25, np.float32)])
    return y


def _act(name, fn="hard_silu"):
    return L.Activation(fn, name=name)


class _Block(keras.layers.Layer):
    """Shared plumbing: explicit build of sublayers inside this layer's name scope."""

    def _sublayers(self):
        return []

    def build(self, input_shape=None):
        for layer in self._sublayers():
            layer.build(None)
        self.built = True


# ----------------------------------------------------------------------------- first conv
@keras.saving.register_keras_serializable(package="elasticvit_tf")
class FirstConv(_Block):
    """3x3 stride-2 conv (3 -> C0, symmetric pad 1), BN, Hardswish
    (docs/method.md#first-conv-and-stem).

    Variables: ``conv/kernel [3, 3, 3, max_width]``, ``bn/*`` ``[max_width]``.

    Args:
        max_width: maximal stem width.
    """

    def __init__(self, max_width, **kwargs):
        super().__init__(**kwargs)
        self.max_width = int(max_width)
        self.conv = DynamicConv2D(3, self.max_width, 3, strides=2, name="conv")
        self.bn = DynamicBatchNorm(self.max_width, name="bn")

    def _sublayers(self):
        return [self.conv, self.bn]

    def call(self, x, width, training=False):
        return hswish(self.bn(self.conv(x, cout=width), training=training))

    def static_config(self, width):
        return {"type": "first_conv", "width": int(width)}

    def to_static(self, x, width, name):
        x = static_conv(x, self.conv, width, name + "_conv")
        x = static_bn(x, self.bn, width, name + "_bn")
        return _act(name + "_act")(x)

    def get_config(self):
        config = super().get_config()
        config.update(max_width=self.max_width)
        return config


# --------------------------------------------------------------------------------- MBConv
@keras.saving.register_keras_serializable(package="elasticvit_tf")
class MBConvBlock(_Block):
    """Elastic MBConv (docs/method.md#mbconv; also the stem blocks with ``max_expand=0`` and the
    transition MBConv of transformer stages).

    ``inner = cin * expand`` (relative to the block INPUT width). With ``max_expand == 0`` (stem
    block) there is no point-wise expansion conv: ``inner = cin``. Shortcut: identity when
    ``cin == cout`` and stride 1; else avg-pool (stride 2, odd-size rule of
    docs/method.md#padding-and-odd-sides) and a 1x1 conv when ``cin != cout`` (checked in the graph
    for the first block of a stage).

    Variables (``max_inner = max_expand * max_in`` or ``max_in``): ``pw/kernel
    [1, 1, max_in, max_inner]``, ``pw_bn``, ``dw/kernel [K, K, max_inner, 1]``, ``dw_bn``,
    ``se1/kernel [1, 1, max_inner, max_inner // 4]`` + bias, ``se2/kernel
    [1, 1, max_inner // 4, max_inner]`` + bias, ``pwl/kernel [1, 1, max_inner, max_out]``,
    ``pwl_bn`` (gamma 0 at init for stride 1), ``shortcut/kernel [1, 1, max_in, max_out]``.

    Args:
        max_in: maximal input width.
        max_out: maximal output width.
        max_expand: maximal expansion ratio (0: stem block without expansion conv).
        kernels: the kernel choices (the super-kernel is the largest).
        strides: 1 or 2.
        se: squeeze-excitation on.
        may_change_width: whether ``cin != cout`` can happen (first block of a stage).
    """

    def __init__(
        self,
        max_in,
        max_out,
        max_expand,
        kernels,
        strides=1,
        se=False,
        may_change_width=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_in = int(max_in)
        self.max_out = int(max_out)
        self.max_expand = int(max_expand)
        self.kernels = tuple(int(k) for k in kernels)
        self.strides = int(strides)
        self.se = bool(se)
        self.may_change_width = bool(may_change_width)
        max_inner = self.max_in * max(self.max_expand, 1)
        self.max_inner = max_inner
        self.pw = None
        if self.max_expand > 0:
            self.pw = DynamicConv2D(self.max_in, max_inner, 1, name="pw")
            self.pw_bn = DynamicBatchNorm(max_inner, name="pw_bn")
        self.dw = DynamicDepthwiseConv2D(max_inner, max(self.kernels), self.strides, name="dw")
        self.dw_bn = DynamicBatchNorm(max_inner, name="dw_bn")
        if self.se:
            self.se1 = DynamicConv2D(max_inner, max_inner // 4, 1, use_bias=True, name="se1")
            self.se2 = DynamicConv2D(max_inner // 4, max_inner, 1, use_bias=True, name="se2")
        self.pwl = DynamicConv2D(max_inner, self.max_out, 1, name="pwl")
        self.pwl_bn = DynamicBatchNorm(self.max_out, zero_init=self.strides == 1, name="pwl_bn")
        self.shortcut = None
        if self.may_change_width:
            self.shortcut = DynamicConv2D(self.max_in, self.max_out, 1, name="shortcut")

    def _sublayers(self):
        out = [self.pw, getattr(self, "pw_bn", None), self.dw, self.dw_bn]
        if self.se:
            out += [self.se1, self.se2]
        out += [self.pwl, self.pwl_bn, self.shortcut]
        return [x for x in out if x is not None]

    def call(self, x, width, expand=None, kernel=None, training=False):
        cin = tf.shape(x)[-1]
        h = x
        if self.pw is not None:
            inner = cin * expand
            h = hswish(self.pw_bn(self.pw(h, cout=inner), training=training))
        else:
            inner = cin
        if len(self.kernels) == 1:
            kernel = self.kernels[0]
        h = self.dw(h, kernel_size=kernel)
        h = hswish(self.dw_bn(h, training=training))
        if self.se:
            g = tf.reduce_mean(h, axis=[1, 2], keepdims=True)
            g = tf.nn.relu(self.se1(g, cout=inner // 4))
            g = keras.activations.hard_sigmoid(self.se2(g, cout=inner))
            h = h * g
        h = self.pwl_bn(self.pwl(h, cout=width), training=training)
        r = x
        if self.strides == 2:
            r = avg_pool_shortcut(r)
        if self.shortcut is not None:
            r = tf.cond(
                tf.equal(cin, width), lambda: tf.identity(r), lambda: self.shortcut(r, cout=width)
            )
        return h + r

    def static_config(self, cin, width, expand=None, kernel=None):
        return {
            "type": "mbconv",
            "cin": int(cin),
            "width": int(width),
            "expand": None if self.pw is None else int(expand),
            "kernel": int(kernel if kernel is not None else self.kernels[0]),
            "strides": self.strides,
            "se": self.se,
        }

    def to_static(self, x, width, name, expand=None, kernel=None):
        cin = int(x.shape[-1])
        kernel = int(kernel if kernel is not None else self.kernels[0])
        h = x
        if self.pw is not None:
            inner = cin * int(expand)
            h = static_conv(h, self.pw, inner, name + "_pw")
            h = _act(name + "_pw_act")(static_bn(h, self.pw_bn, inner, name + "_pw_bn"))
        else:
            inner = cin
        h = static_dwconv(h, self.dw, kernel, name + "_dw")
        h = _act(name + "_dw_act")(static_bn(h, self.dw_bn, inner, name + "_dw_bn"))
        if self.se:
            g = L.GlobalAveragePooling2D(keepdims=True, name=name + "_se_pool")(h)
            g = static_conv(g, self.se1, inner // 4, name + "_se1", activation="relu")
            g = static_conv(g, self.se2, inner, name + "_se2", activation="hard_sigmoid")
            h = L.Multiply(name=name + "_se_mul")([h, g])
        h = static_conv(h, self.pwl, width, name + "_pwl")
        h = static_bn(h, self.pwl_bn, width, name + "_pwl_bn")
        r = x
        if self.strides == 2:
            side_h, side_w = int(x.shape[1]), int(x.shape[2])
            if side_h % 2 or side_w % 2:
                r = L.ZeroPadding2D(((side_h % 2, 0), (side_w % 2, 0)), name=name + "_sc_pad")(r)
            r = avg_pool_as_dwconv(r, name + "_sc_pool")
        if cin != width:
            if self.shortcut is None:
                raise ValueError(f"{self.name}: cin={cin} != width={width} but no shortcut conv")
            r = static_conv(r, self.shortcut, width, name + "_shortcut")
        return L.Add(name=name + "_add")([h, r])

    def get_config(self):
        config = super().get_config()
        config.update(
            max_in=self.max_in,
            max_out=self.max_out,
            max_expand=self.max_expand,
            kernels=list(self.kernels),
            strides=self.strides,
            se=self.se,
            may_change_width=self.may_change_width,
        )
        return config


# ------------------------------------------------------------------------ transformer layer
@keras.saving.register_keras_serializable(package="elasticvit_tf")
class TransformerLayer(_Block):
    """One (attention, FFN) pair of a transformer stage, pre-norm
    (docs/method.md#transformer-layer).

    Layer 0 of every stage starts with a transition MBConv (expand ``transition_expand``, kernel
    ``transition_kernel``, SE, stride 2 when the stage downsamples). Tokens are ``(B, N, C)``
    row-major over a square ``side x side`` map.

    Variables (Cmax = ``max_width``): ``ln1/{gamma,beta} [Cmax]``; ``qkv/kernel
    [Cmax, 6 Cmax]`` whose *columns* are the official super-rows [Q: 0..Cmax | K: Cmax..2Cmax |
    V: 2Cmax..6Cmax] (official ``qkv.weight`` transposed; width ``max_v`` replaces 4);
    ``dw_v/kernel [3, 3, max_v Cmax, 1]``; ``proj/kernel [max_v Cmax, Cmax]`` + bias;
    ``attention_bias [(2R - 1)^2, Cmax / head_dim]``; ``ln2``; ``fc1/kernel
    [Cmax, max_mlp Cmax]`` + bias; ``fc2/kernel [max_mlp Cmax, Cmax]`` + bias.

    Args:
        max_width: stage max width Cmax.
        max_mlp: max MLP ratio.
        max_v: max V scale.
        table_side: R, the largest feature side of this stage.
        head_dim: per-head q/k dim (heads = width / head_dim, per-head v dim = head_dim * v).
        transition: whether this is layer 0 (has the transition MBConv).
        transition_strides: stride of the transition MBConv.
        transition_expand: expansion of the transition MBConv.
        transition_kernel: DW kernel of the transition MBConv.
    """

    def __init__(
        self,
        max_width,
        max_mlp,
        max_v,
        table_side,
        head_dim=16,
        transition=False,
        transition_strides=1,
        transition_expand=6,
        transition_kernel=3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_width = int(max_width)
        self.max_mlp = int(max_mlp)
        self.max_v = int(max_v)
        self.table_side = int(table_side)
        self.head_dim = int(head_dim)
        self.transition = bool(transition)
        self.transition_strides = int(transition_strides)
        self.transition_expand = int(transition_expand)
        self.transition_kernel = int(transition_kernel)
        cm = self.max_width
        self.max_heads = cm // self.head_dim
        self.mbconv = None
        if self.transition:
            self.mbconv = MBConvBlock(
                cm,
                cm,
                self.transition_expand,
                (self.transition_kernel,),
                strides=self.transition_strides,
                se=True,
                may_change_width=True,
                name="transition",
            )
        self.ln1 = DynamicTokenLayerNorm(cm, name="ln1")
        self.qkv = DynamicDense(cm, (2 + self.max_v) * cm, use_bias=False, name="qkv")
        self.dw_v = DynamicDepthwiseConv2D(self.max_v * cm, 3, 1, name="dw_v")
        self.proj = DynamicDense(self.max_v * cm, cm, name="proj")
        self.ln2 = DynamicTokenLayerNorm(cm, name="ln2")
        self.fc1 = DynamicDense(cm, self.max_mlp * cm, name="fc1")
        self.fc2 = DynamicDense(self.max_mlp * cm, cm, name="fc2")

    def _sublayers(self):
        out = [self.mbconv, self.ln1, self.qkv, self.dw_v, self.proj, self.ln2, self.fc1]
        return [x for x in out + [self.fc2] if x is not None]

    def build(self, input_shape=None):
        super().build(input_shape)
        r = self.table_side
        self.attention_bias = self.add_weight(
            name="attention_bias",
            shape=((2 * r - 1) ** 2, self.max_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )

    # -------------------------------------------------------------------------- dynamic
    def qkv_kernel(self, c, v):
        """The ``[C, (2 + v) C]`` qkv kernel of a subnet: official super-row mapping."""
        w = self.qkv.kernel
        cm = self.max_width
        return tf.concat([w[:c, :c], w[:c, cm : cm + c], w[:c, 2 * cm : 2 * cm + v * c]], axis=1)

    def _bias(self, side, heads):
        r = self.table_side
        n = side * side
        pos = tf.range(n)
        ys, xs = pos // side, pos % side
        idx = (ys[:, None] - ys[None, :] + r - 1) * (2 * r - 1) + (
            xs[:, None] - xs[None, :] + r - 1
        )
        bias = tf.gather(self.attention_bias[:, :heads], idx)
        return tf.transpose(bias, [2, 0, 1])

    def call(self, x, side, width, mlp_ratio, v_scale, training=False):
        """``x``: tokens ``(B, N, cin)``; returns ``(tokens (B, N', width), side')``."""
        if self.mbconv is not None:
            cin = tf.shape(x)[-1]
            img = tf.reshape(x, [-1, side, side, cin])
            img = self.mbconv(img, width=width, expand=self.transition_expand, training=training)
            side = tf.shape(img)[1]
            x = tf.reshape(img, [-1, side * side, width])
        x = x + self._attention(self.ln1(x), side, width, v_scale)
        h = hswish(self.fc1(self.ln2(x), out=mlp_ratio * width))
        x = x + self.fc2(h, out=width)
        return x, side

    def _attention(self, z, side, c, v):
        dq = self.head_dim
        heads = c // dq
        dv = dq * v
        n = side * side
        t = DynamicDense.apply_kernel(z, self.qkv_kernel(c, v))
        t = tf.reshape(t, [-1, n, heads, 2 * dq + dv])
        q = tf.transpose(t[..., :dq], [0, 2, 1, 3])
        k = tf.transpose(t[..., dq : 2 * dq], [0, 2, 1, 3])
        vv = tf.reshape(t[..., 2 * dq :], [-1, side, side, heads * dv])
        vv = self.dw_v(vv, kernel_size=3)
        vv = tf.transpose(tf.reshape(vv, [-1, n, heads, dv]), [0, 2, 1, 3])
        attn = tf.matmul(q, k, transpose_b=True) * (dq**-0.5) + self._bias(side, heads)
        # softmax in float32 under mixed precision (no-op casts in float32)
        attn = tf.cast(tf.nn.softmax(tf.cast(attn, tf.float32), axis=-1), q.dtype)
        o = tf.reshape(tf.transpose(tf.matmul(attn, vv), [0, 2, 1, 3]), [-1, n, heads * dv])
        return self.proj(hswish(o), out=c)

    # --------------------------------------------------------------------------- static
    def static_config(self, cin, side, width, mlp_ratio, v_scale):
        return {
            "type": "transformer",
            "cin": int(cin),
            "side": int(side),
            "width": int(width),
            "heads": int(width) // self.head_dim,
            "mlp_ratio": int(mlp_ratio),
            "v_scale": int(v_scale),
            "transition": self.transition,
        }

    def static_transition(self, x, side, width, name):
        """The transition MBConv's static twin on tokens ``(B, side^2, cin)`` (layer 0 only):
        to map, MBConv, to tokens; returns ``(tokens, side)``. Also the LUT's transition block
        (``export/lut_blocks.py``)."""
        cin, c = int(x.shape[-1]), int(width)
        img = L.Reshape((side, side, cin), name=name + "_to_map")(x)
        img = self.mbconv.to_static(img, c, name + "_transition", expand=self.transition_expand)
        side = int(img.shape[1])
        return L.Reshape((side * side, c), name=name + "_to_tokens")(img), side

    def to_static(self, x, side, width, mlp_ratio, v_scale, name):
        """``x``: tokens KerasTensor ``(B, side^2, cin)``; returns ``(tokens, side)``."""
        c, v, m = int(width), int(v_scale), int(mlp_ratio)
        if self.mbconv is not None:
            x, side = self.static_transition(x, side, c, name)
        heads, dq = c // self.head_dim, self.head_dim
        z = static_token_ln(x, self.ln1, name + "_ln1")
        qkv_w = _np(self.qkv_kernel(c, v))
        t = static_dense(z, self.qkv, (2 + v) * c, name + "_qkv", kernel=qkv_w)
        att = static_layers.RelPosAttention(heads, dq, dq * v, side, name=name + "_attn")
        o = att(t)
        idx = static_ops.relative_position_index(side, self.table_side)
        # crop the R-table to the (2s - 1)^2 offsets reachable at this side
        d = np.arange(-(side - 1), side)
        r = self.table_side
        rows = ((d[:, None] + r - 1) * (2 * r - 1) + (d[None, :] + r - 1)).reshape(-1)
        table = _np(self.attention_bias)[rows, :heads]
        del idx
        dw = _np(self.dw_v.kernel)[:, :, : heads * dq * v, :]
        att.set_weights([dw, table])
        o = _act(name + "_attn_act")(o)
        o = static_dense(o, self.proj, c, name + "_proj")
        x = L.Add(name=name + "_attn_add")([x, o])
        z = static_token_ln(x, self.ln2, name + "_ln2")
        h = static_dense(z, self.fc1, m * c, name + "_fc1", activation="hard_silu")
        h = static_dense(h, self.fc2, c, name + "_fc2")
        x = L.Add(name=name + "_ffn_add")([x, h])
        return x, side

    def get_config(self):
        config = super().get_config()
        config.update(
            max_width=self.max_width,
            max_mlp=self.max_mlp,
            max_v=self.max_v,
            table_side=self.table_side,
            head_dim=self.head_dim,
            transition=self.transition,
            transition_strides=self.transition_strides,
            transition_expand=self.transition_expand,
            transition_kernel=self.transition_kernel,
        )
        return config


# ----------------------------------------------------------------------------------- head
@keras.saving.register_keras_serializable(package="elasticvit_tf")
class ClassifierHead(_Block):
    """MobileNetV3-style head on tokens (docs/method.md#head): per-token linear C -> head_mul C, BN
    over tokens, Hardswish, mean over tokens, linear -> head_width, Hardswish, classifier.

    Variables: ``pre/kernel [max_in, head_mul max_in]`` + bias, ``pre_bn``, ``fc/kernel
    [head_mul max_in, head_width]`` + bias, ``classifier/kernel [head_width, num_classes]`` +
    bias.

    Args:
        max_in: max stage-5 width.
        head_mul: token expansion.
        head_width: pre-classifier width.
        num_classes: classes.
    """

    def __init__(self, max_in, head_mul, head_width, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.max_in = int(max_in)
        self.head_mul = int(head_mul)
        self.head_width = int(head_width)
        self.num_classes = int(num_classes)
        hm = self.head_mul * self.max_in
        self.pre = DynamicDense(self.max_in, hm, name="pre")
        self.pre_bn = DynamicBatchNorm(hm, name="pre_bn")
        self.fc = DynamicDense(hm, self.head_width, name="fc")
        self.classifier = DynamicDense(self.head_width, self.num_classes, name="classifier")

    def _sublayers(self):
        return [self.pre, self.pre_bn, self.fc, self.classifier]

    def call(self, x, training=False):
        c = tf.shape(x)[-1]
        t = hswish(self.pre_bn(self.pre(x, out=self.head_mul * c), training=training))
        g = tf.reduce_mean(t, axis=1)
        g = hswish(self.fc(g, out=self.head_width))
        return self.classifier(g, out=self.num_classes)

    def static_config(self, cin):
        return {"type": "head", "cin": int(cin), "hidden": self.head_mul * int(cin)}

    def to_static(self, x, name):
        hm = self.head_mul * int(x.shape[-1])
        t = static_dense(x, self.pre, hm, name + "_pre")
        t = _act(name + "_pre_act")(static_bn(t, self.pre_bn, hm, name + "_pre_bn"))
        g = L.GlobalAveragePooling1D(name=name + "_pool")(t)
        g = static_dense(g, self.fc, self.head_width, name + "_fc", activation="hard_silu")
        return static_dense(g, self.classifier, self.num_classes, name + "_classifier")

    def get_config(self):
        config = super().get_config()
        config.update(
            max_in=self.max_in,
            head_mul=self.head_mul,
            head_width=self.head_width,
            num_classes=self.num_classes,
        )
        return config

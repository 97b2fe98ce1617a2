"""Static subnet extraction and BatchNorm recalibration (docs/method.md#bn-recalibration,
docs/design.md#resize-and-bn-recalibration).

``extract_subnet(net, arch)`` walks the arch's block plan (``blocks.placed_plan``) and asks every
active dynamic block for its static twin (``to_static``): a plain functional ``keras.Model`` with a fixed
``(r, r, 3)`` input (no resize inside), standard Keras layers plus the two registered custom
layers of ``layers.static_layers``, weights copied from the supernet slices.

``recalibrate_bn(target, dataset, num_batches)`` re-estimates every BatchNorm in place with the
cumulative average of batch means and unbiased batch variances (PyTorch ``momentum=None``),
normalising with batch statistics during the passes, as the official evaluation does.

``subnet_top1(net, arch, ...)`` is the evaluation of one subnet that the search's fitness
(``search.evaluator.SubnetEvaluator``) and the training's periodic evaluation
(``train.callbacks.EmaEvaluator``) share: set the arch, recalibrate BN, top-1.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import BlockKind, placed_plan
from elasticvit_tf.layers.resize import resize_images


def extract_subnet(net, arch: ArchConfig | None = None, name: str | None = None) -> keras.Model:
    """Builds the standalone static model of ``arch`` (default: slot 0's active arch)."""
    from elasticvit_tf.supernet import ElasticSupernet

    if not isinstance(net, ElasticSupernet):
        raise ValueError(  # noqa: TRY004 (project rule: ValueError on user input)
            f"extract_subnet: expected an ElasticSupernet, got {type(net).__name__}"
        )
    if arch is None:
        arch = net.get_arch(0)
    placed = placed_plan(net.space, arch)  # validates the arch
    inputs = keras.Input((arch.resolution, arch.resolution, 3), name="image")
    x, side = inputs, None
    for b in placed:
        spec, kind = b.spec, b.spec.kind
        if kind is BlockKind.FIRST_CONV:
            x = net.first_conv.to_static(x, spec.out_channels, b.name)
        elif kind is BlockKind.STEM_BLOCK:
            x = net.stem_blocks[b.index].to_static(x, spec.out_channels, b.name, kernel=spec.kernel)
        elif kind is BlockKind.MBCONV:
            x = net.stages[b.stage][b.index].to_static(
                x, spec.out_channels, b.name, expand=spec.expand_ratio, kernel=spec.kernel
            )
        elif kind is BlockKind.TRANSITION:  # built by the stage's layer 0, the next block
            if side is None:
                side = int(x.shape[1])
                x = keras.layers.Reshape((side * side, int(x.shape[-1])), name="to_tokens")(x)
        elif kind is BlockKind.TRANSFORMER:
            x, side = net.stages[b.stage][b.index].to_static(
                x, side, spec.out_channels, spec.mlp_ratio, spec.v_scale, b.name
            )
        else:
            x = net.head.to_static(x, b.name)
    if name is None:
        name = "subnet_" + arch.key().replace(".", "_").replace("-", "_")
    return keras.Model(inputs, x, name=name)


def subnet_structure(net, arch: ArchConfig) -> list:
    """The ``static_config`` of every active block, in order (for reports / debugging)."""
    out = []
    cin = None
    for b in placed_plan(net.space, arch):
        spec, kind = b.spec, b.spec.kind
        if kind is BlockKind.FIRST_CONV:
            out.append(net.first_conv.static_config(spec.out_channels))
        elif kind is BlockKind.STEM_BLOCK:
            c = spec.out_channels
            out.append(net.stem_blocks[b.index].static_config(c, c, kernel=spec.kernel))
        elif kind is BlockKind.MBCONV:
            out.append(
                net.stages[b.stage][b.index].static_config(
                    spec.in_channels, spec.out_channels, spec.expand_ratio, spec.kernel
                )
            )
        elif kind is BlockKind.TRANSITION:  # part of the stage's layer 0
            cin = spec.in_channels
        elif kind is BlockKind.TRANSFORMER:
            out.append(
                net.stages[b.stage][b.index].static_config(
                    cin if b.index == 0 else spec.in_channels,
                    spec.input_side,
                    spec.out_channels,
                    spec.mlp_ratio,
                    spec.v_scale,
                )
            )
        else:
            out.append(net.head.static_config(spec.in_channels))
    return out


# ------------------------------------------------------------------------ recalibration
def _images(batch):
    if isinstance(batch, dict):
        for key in ("image", "images", "x", "inputs"):
            if key in batch:
                return batch[key]
        raise ValueError(f"recalibrate_bn: dict batch without an image key: {sorted(batch)}")
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def _batches(dataset, num_batches):
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches={num_batches!r}; expected a positive int")
    n = 0
    for batch in dataset:
        yield tf.convert_to_tensor(_images(batch), tf.float32)
        n += 1
        if n >= num_batches:
            return
    if n == 0:
        raise ValueError("recalibrate_bn: the dataset yielded no batch")


def recalibrate_bn(target, dataset, num_batches: int, slot: int = 0) -> None:
    """Resets and re-estimates every BatchNorm of ``target`` in place
    (docs/method.md#bn-recalibration).

    Args:
        target: an ``ElasticSupernet`` (its ``slot``'s active arch: only the active slices of
            the moving statistics change) or an extracted static ``keras.Model``.
        dataset: iterable of image batches, ``(images, labels)`` tuples or dicts with
            ``"image"``; images NHWC float32, already normalised (resized in-model for the
            supernet, resized bicubically to the model input for a static model).
        num_batches: number of batches to use (fewer if the dataset ends first).
        slot: supernet slot.
    """
    from elasticvit_tf.supernet import ElasticSupernet

    if isinstance(target, ElasticSupernet):
        _recalibrate_supernet(target, dataset, num_batches, slot)
    elif isinstance(target, keras.Model):
        _recalibrate_static(target, dataset, num_batches)
    else:
        raise ValueError(  # noqa: TRY004
            f"recalibrate_bn: expected an ElasticSupernet or keras.Model, got "
            f"{type(target).__name__}"
        )


# One traced calibration step per (supernet, slot): the arch lives in variables, so the same
# trace serves every arch (a fresh tf.function per call would re-trace the supernet's training
# forward on every recalibration, seconds each on CPU). Keyed weakly so nets can be collected.
_CALIBRATION_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _calibration_step(net, slot):
    steps = _CALIBRATION_STEPS.setdefault(net, {})
    if slot not in steps:
        factor = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="bn_calibration_factor")
        net_ref = weakref.ref(net)  # the cached closure must not keep its key alive

        @tf.function(jit_compile=False, reduce_retracing=True)
        def step(x):
            net_ref()(x, training=True, slot=slot)

        steps[slot] = (factor, step)
    return steps[slot]


def _recalibrate_supernet(net, dataset, num_batches, slot):
    slot = net._check_slot(slot)
    bns = net.batch_norm_layers()
    factor, step = _calibration_step(net, slot)
    for bn in bns:
        bn.calibration_factor = factor
    try:
        for i, x in enumerate(_batches(dataset, num_batches)):
            factor.assign(1.0 / (i + 1))
            step(x)
    finally:
        for bn in bns:
            bn.calibration_factor = None


def _recalibrate_static(model, dataset, num_batches):
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    if not bns:
        return
    probe = keras.Model(model.inputs, [bn.input for bn in bns])
    size = model.inputs[0].shape[1:3]

    @tf.function(jit_compile=False, reduce_retracing=True)
    def stats(x):
        if size[0] is not None:
            x = resize_images(x, size[0], "bicubic")
        feats = probe(x, training=True)
        if not isinstance(feats, (list, tuple)):
            feats = [feats]
        out = []
        for f in feats:
            axes = list(range(len(f.shape) - 1))
            mean, var = tf.nn.moments(f, axes)
            n = tf.cast(tf.reduce_prod(tf.shape(f)[:-1]), f.dtype)
            out.append((mean, var * n / tf.maximum(n - 1.0, 1.0)))
        return out

    sums = None
    n = 0
    for x in _batches(dataset, num_batches):
        res = [(m.numpy().astype(np.float64), v.numpy().astype(np.float64)) for m, v in stats(x)]
        sums = res if sums is None else [(a + m, b + v) for (a, b), (m, v) in zip(sums, res)]
        n += 1
    for bn, (m, v) in zip(bns, sums):
        bn.moving_mean.assign((m / n).astype(np.float32))
        bn.moving_variance.assign((v / n).astype(np.float32))


# --------------------------------------------------------------------------- evaluation
# One traced top-1 count per (supernet, slot), kept like the calibration steps above.
_TOP1_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _top1_step(net, slot):
    steps = _TOP1_STEPS.setdefault(net, {})
    if slot not in steps:
        net_ref = weakref.ref(net)

        @tf.function(jit_compile=False, reduce_retracing=True)
        def correct(x, y):
            logits = net_ref()(x, training=False, slot=slot)
            pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
            y = tf.reshape(tf.cast(y, tf.int32), [-1])
            return tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int64))

        steps[slot] = correct
    return steps[slot]


def subnet_top1(
    net, arch: ArchConfig, calibration_data, calibration_batches: int, eval_data, slot: int = 0
) -> float:
    """Top-1 of one subnet of a supernet (docs/method.md#bn-recalibration).

    Sets ``arch`` in ``slot``, recalibrates every BatchNorm on ``calibration_batches`` batches
    of ``calibration_data`` (0: keeps the statistics), then counts correct predictions over all
    of ``eval_data`` with BN in inference mode. No fine-tuning; the arch stays set.

    Args:
        net: an ``ElasticSupernet``.
        arch: the subnet.
        calibration_data: iterable of training batches (see ``recalibrate_bn``), or a callable
            returning one (called per subnet, so every subnet sees the same batches whatever
            was evaluated before).
        calibration_batches: BN recalibration batches (>= 0).
        eval_data: iterable of ``(images, int labels)`` batches.
        slot: the supernet slot used.

    Returns:
        The fraction of correct top-1 predictions, in [0, 1].
    """
    net.set_arch(arch, slot=slot)
    if calibration_batches > 0:
        if callable(calibration_data):
            calibration_data = calibration_data()
        recalibrate_bn(net, calibration_data, calibration_batches, slot=slot)
    correct = _top1_step(net, slot)
    right, total = 0, 0
    for images, labels in eval_data:
        right += int(correct(images, labels))
        total += int(np.size(labels))
    if total == 0:
        raise ValueError("eval_data yielded no examples: expected a non-empty evaluation split")
    return right / total

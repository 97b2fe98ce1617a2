"""The multi-subnet training step (docs/method.md#training-step) as a Keras model used by
``model.fit``.

``SupernetTrainer`` wraps an ``ElasticSupernet`` whose arch slots were written on the host by
``SamplerCallback`` before the batch. One ``train_step``:

1. (optional) the frozen teacher ensemble predicts ``p_T = mean_t softmax(z_t / T)``;
2. for every slot ``i``: forward at the slot's resolution, the slot's loss, gradients of that
   loss (summed over slots):

   * distillation ``"min_from_mean"`` (the ElasticViT recipe; the sampler's last role is
     ``"min"``): the LAST slot, adaptive alpha-divergence against the mean of the other slots'
     (stopped) probabilities;
   * distillation ``"from_max"`` (BigNAS in-place distillation; slot 0 is the max subnet):
     every slot after the first, soft-target CE against the max subnet's (stopped)
     probabilities;
   * every other slot: soft-target CE against ``p_T`` with teachers, else label-smoothed CE;

3. the summed gradient is averaged over replicas, clipped with unit-wise AGC, and applied once
   by AdamW (selective weight decay, warm-up + cosine LR);
4. the EMA shadow weights are updated.

The step returns per-batch values (not running means): ``ce_slot{i}`` (hard-label CE of slot
``i`` on the batch, the memory-bank score), ``loss_slot{i}``, ``loss`` and ``lr``; with
``grad_cosine`` also ``grad_cos`` (mean cosine of consecutive slots' gradients) and
``grad_cos_step`` (cosine between this step's and the previous step's update direction).

The archs are read from int32 variables inside the graph, so one trace serves every subnet;
only a change of the role layout or the distillation needs a new trace.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from elasticvit_tf.model_dir import EmaWeights, ema_source_variables
from elasticvit_tf.train import losses, optim

DISTILLATIONS = ("none", "min_from_mean", "from_max")


class SupernetTrainer(keras.Model):
    """Trains an ``ElasticSupernet`` with several subnets per step.

    Args:
        net: the supernet (built).
        teachers: frozen Keras classifiers with the same classes (ensemble mean); may be empty.
        teacher_temperature: temperature applied to the teachers' logits only (official 0.2).
        label_smoothing: label smoothing of the CE used for non-distilled slots without teachers.
        agc_clip: AGC clip factor (0 disables AGC).
        agc_eps: AGC floor on the weight norm.
        ema_decay: EMA decay (0 disables the EMA).
        ema_warmup: use ``min(decay, (1 + n) / (10 + n))`` at update ``n``.
        grad_cosine: compute the gradient-conflict diagnostics.
        skip_unused_updates: variables that no subnet of the step used (blocks past every
            slot's depth, width-changing shortcuts no slot needs) get no optimizer update at
            all, as the official code under torch >= 2 (``set_to_none``); default: every
            super-weight gets its AdamW update, with zero gradient where unused
            (docs/method.md#training-recipe). Needs a ``FusedAdamW`` optimizer.
        fused_update: apply AGC, AdamW and the EMA as one XLA-compiled pass over the weights
            (``optim.FusedUpdate``) where it is supported (one replica, ``FusedAdamW`` without
            loss scaling); False: always the Keras ``apply_gradients`` path.
    """

    def __init__(
        self,
        net,
        teachers: Sequence[keras.Model] = (),
        teacher_temperature: float = 0.2,
        label_smoothing: float = 0.0,
        agc_clip: float = optim.AGC_CLIP,
        agc_eps: float = optim.AGC_EPS,
        ema_decay: float = optim.OFFICIAL_EMA_DECAY,
        ema_warmup: bool = False,
        grad_cosine: bool = False,
        skip_unused_updates: bool = False,
        fused_update: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.net = net
        self.teachers = list(teachers)
        self.teacher_temperature = float(teacher_temperature)
        self.label_smoothing = float(label_smoothing)
        self.agc_clip = float(agc_clip)
        self.agc_eps = float(agc_eps)
        self.ema_decay = float(ema_decay)
        self.ema_warmup = bool(ema_warmup)
        self.grad_cosine = bool(grad_cosine)
        self.skip_unused_updates = bool(skip_unused_updates)
        self.fused_update = bool(fused_update)
        self._usage = usage_groups(net) if self.skip_unused_updates else []
        self.num_slots = int(net.num_slots)
        self.distillation = "min_from_mean"
        self.trace_count = 0  # Python side effect: counts traces of train_step
        for t in self.teachers:
            t.trainable = False
        self.ema = (
            EmaWeights(ema_source_variables(net), aggregation="only_first_replica")
            if self.ema_decay > 0
            else None
        )
        self._prev_update = None
        if self.grad_cosine:
            self._prev_update = [
                tf.Variable(
                    tf.zeros(v.shape, v.dtype),
                    trainable=False,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                    name=f"prev_update_{i}",
                )
                for i, v in enumerate(net.trainable_variables)
            ]
        self.top1 = keras.metrics.SparseCategoricalAccuracy(name="top1")
        self.built = True

    # ------------------------------------------------------------------------------ roles
    def set_roles(self, roles: Sequence[str], distillation: Optional[str] = None) -> None:
        """Records the sampler's role layout and distillation (``Sampler.distillation``; None:
        ``"min_from_mean"`` when the last role is ``"min"``, else ``"none"``). Fixed per
        sampler: traced once."""
        roles = tuple(roles)
        if len(roles) != self.num_slots:
            raise ValueError(
                f"the sampler yields {len(roles)} subnets per step but the supernet has "
                f"num_slots={self.num_slots}; expected equal"
            )
        if distillation is None:
            distillation = "min_from_mean" if roles[-1] == "min" else "none"
        if distillation not in DISTILLATIONS:
            raise ValueError(f"distillation={distillation!r}; expected one of {DISTILLATIONS}")
        if distillation == "from_max" and roles[0] != "max":
            raise ValueError(f"distillation 'from_max' needs the max subnet in slot 0; got {roles}")
        self.distillation = distillation if self.num_slots > 1 else "none"

    @property
    def distill_last(self) -> bool:
        return self.distillation == "min_from_mean"

    @property
    def metrics(self):
        return [self.top1]

    def call(self, inputs, training=False, slot=0):
        return self.net(inputs, training=training, slot=slot)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 (backend/tensorflow/trainer.py) peeks one batch of the distributed
        # dataset and calls ``strategy.reduce("MEAN", batch)`` on the whole (x, y) nest;
        # MultiWorkerMirroredStrategy cannot reduce a nest of PerReplica values across
        # workers ("Attempt to convert a value (PerReplica...) to a Tensor"). The batch is
        # only used for its shapes, so build from this worker's first local replica instead.
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    batch,
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # ------------------------------------------------------------------------------ losses
    def _teacher_probs(self, images):
        logits = []
        for t in self.teachers:
            x = images
            shape = t.inputs[0].shape if getattr(t, "inputs", None) else None
            if shape is not None and shape[1] is not None and shape[1] != images.shape[1]:
                x = tf.image.resize(images, (shape[1], shape[2]), method="bicubic")
            logits.append(tf.cast(t(x, training=False), tf.float32))
        return tf.stop_gradient(losses.teacher_probs(logits, self.teacher_temperature))

    # ------------------------------------------------------------------------------ step
    def _slot_loss(self, is_distill, logits, labels, teacher, prob_sum):
        def base():
            if teacher is not None:
                return losses.soft_target_cross_entropy(teacher, logits)
            return losses.label_smoothed_cross_entropy(labels, logits, self.label_smoothing)

        if self.distillation == "none":
            return base()

        def distill():
            if self.distillation == "from_max":  # prob_sum holds the max subnet's alone
                return losses.soft_target_cross_entropy(tf.stop_gradient(prob_sum), logits)
            target = tf.stop_gradient(prob_sum / float(self.num_slots - 1))
            return losses.adaptive_alpha_divergence(logits, target)

        return tf.cond(is_distill, distill, base)

    def train_step(self, data):
        self.trace_count += 1
        images, labels = data[0], data[1]
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        variables = self.net.trainable_variables
        ctx = tf.distribute.get_replica_context()
        n_rep = float(ctx.num_replicas_in_sync)
        teacher = self._teacher_probs(images) if self.teachers else None
        num_classes = self.net.num_classes
        last = self.num_slots - 1
        opt = self.optimizer
        loss_scaling = isinstance(opt, keras.optimizers.LossScaleOptimizer)
        adamw = opt.inner_optimizer if loss_scaling else opt

        # NOTE: the slots run in a tf.while_loop with the slot index as a tensor, so the
        # supernet forward/backward is traced once instead of once per slot (tracing and graph
        # optimisation of the dynamic supernet dominate start-up time on CPU).
        def body(i, total, prev, prob_sum, cos_sum, ce_arr, loss_arr):
            if self.distillation == "from_max":
                is_distill = i > 0
                keep = tf.cast(tf.equal(i, 0), tf.float32)  # the target: max's probabilities
            else:
                is_distill = tf.logical_and(tf.constant(self.distill_last), tf.equal(i, last))
                keep = tf.cast(tf.logical_not(is_distill), tf.float32)
            with tf.GradientTape() as tape:
                logits = tf.cast(self.net(images, training=True, slot=i), tf.float32)
                loss = self._slot_loss(is_distill, logits, labels, teacher, prob_sum)
                scaled = loss / n_rep
                if loss_scaling:  # float16: scaled up so small gradients do not flush to 0
                    scaled = opt.scale_loss(scaled)
            grads = tape.gradient(scaled, variables)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
            prob_sum = prob_sum + keep * tf.stop_gradient(tf.nn.softmax(logits))
            ce = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
            if self.grad_cosine:
                cos = optim.flat_cosine(prev, grads)
                cos_sum = cos_sum + tf.where(i > 0, cos, 0.0)
                prev = grads
            total = [a + g for a, g in zip(total, grads)]
            return (
                i + 1,
                total,
                prev,
                prob_sum,
                cos_sum,
                ce_arr.write(i, ce),
                loss_arr.write(i, loss),
            )

        zeros = [tf.zeros(v.shape, v.dtype) for v in variables]
        batch = tf.shape(images)[0]
        loop_vars = (
            tf.constant(0),
            zeros,
            zeros if self.grad_cosine else [],
            tf.zeros([batch, num_classes], tf.float32),
            tf.constant(0.0),
            tf.TensorArray(tf.float32, size=self.num_slots),
            tf.TensorArray(tf.float32, size=self.num_slots),
        )
        _, total, _, _, cos_sum, ce_arr, loss_arr = tf.while_loop(
            lambda i, *_: i < self.num_slots, body, loop_vars, parallel_iterations=1
        )
        ces, slot_losses = ce_arr.stack(), loss_arr.stack()
        logs = {}
        for slot in range(self.num_slots):
            logs[f"ce_slot{slot}"] = ces[slot]
            logs[f"loss_slot{slot}"] = slot_losses[slot]

        # Average over replicas here so AGC sees the global gradient (as DDP + timm do).
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, total)
        if loss_scaling:  # AGC and the logged cosines see true gradients (inf/nan stay so)
            scale = tf.identity(opt.dynamic_scale)
            total = [g / scale for g in total]
        if self.grad_cosine:
            logs["grad_cos"] = cos_sum / max(self.num_slots - 1, 1)
            logs["grad_cos_step"] = optim.flat_cosine(total, self._prev_update)
            for p, g in zip(self._prev_update, total):
                p.assign(g)
        if self.fused_update and optim.FusedUpdate.supported(opt, ctx.num_replicas_in_sync):
            self._fused_step(total, variables)
            logs["loss"] = tf.reduce_sum(slot_losses)
            logs["lr"] = tf.cast(self.optimizer.learning_rate, tf.float32)
            return _for_multi_worker(logs, self.distribute_strategy)
        if self.agc_clip > 0:
            total = optim.adaptive_clip_gradients(total, variables, self.agc_clip, self.agc_eps)
        # NOTE: Keras sums gradients over replicas again inside apply_gradients; dividing the
        # (identical) averaged gradient by the replica count first makes that sum the average.
        if self.skip_unused_updates:
            if not isinstance(adamw, optim.FusedAdamW):
                raise ValueError(
                    f"skip_unused_updates needs an optim.FusedAdamW, got {type(adamw).__name__}"
                )
            dims = [self.net._dims(s) for s in range(self.num_slots)]
            adamw.skip_mask = {}
            for group, used in self._usage:
                mask = used(dims)
                adamw.skip_mask.update({adamw._var_key(v): mask for v in group})
        grads = [g / n_rep for g in total]
        if loss_scaling:  # the LossScaleOptimizer unscales, and skips the step on inf/nan
            grads = [g * scale for g in grads]
        try:
            opt.apply_gradients(zip(grads, variables))
        finally:
            if self.skip_unused_updates:
                adamw.skip_mask = None
        if self.ema is not None:
            decay = optim.ema_decay_at(
                self.ema_decay, self.optimizer.iterations, warmup=self.ema_warmup
            )
            optim.ema_update(self.ema.shadow, self.ema.source_variables, decay)
        logs["loss"] = tf.reduce_sum(slot_losses)
        logs["lr"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        return _for_multi_worker(logs, self.distribute_strategy)

    def _fused_step(self, total, variables):
        """AGC + AdamW + EMA as one XLA-compiled update (``optim.FusedUpdate``)."""
        ema = self.ema
        fused = optim.FusedUpdate(
            self.optimizer,
            variables,
            self.agc_clip,
            self.agc_eps,
            ema.shadow if ema is not None else (),
            ema.source_variables if ema is not None else (),
        )
        masks = None
        if self.skip_unused_updates:
            dims = [self.net._dims(s) for s in range(self.num_slots)]
            position = {id(v): i for i, v in enumerate(variables)}
            masks = {}
            for group, used in self._usage:
                mask = used(dims)
                masks.update({position[id(v)]: mask for v in group})
        decay = None
        if ema is not None:  # the decay at the new step, as the Keras path computes it
            decay = optim.ema_decay_at(
                self.ema_decay, self.optimizer.iterations + 1, warmup=self.ema_warmup
            )
        fused(total, decay, masks)

    def test_step(self, data):
        images, labels = data[0], data[1]
        logits = self.net(images, training=False, slot=0)
        self.top1.update_state(tf.reshape(labels, [-1]), logits)
        return {"top1": self.top1.result()}


def _for_multi_worker(logs: dict, strategy) -> dict:
    """Scalar logs as shape ``[1]`` under a multi-worker strategy.

    Keras 3.15 reduces step outputs across workers with ``strategy.reduce("MEAN", v, axis=0)``
    (``reduce_per_replica``), which rejects scalars; a ``[1]`` value reduces to the scalar mean
    over all replicas. Elsewhere the logs are returned unchanged.
    """
    extended = getattr(strategy, "extended", None)
    in_multi_worker = getattr(extended, "_in_multi_worker_mode", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not (
        in_multi_worker and in_multi_worker()
    ):
        return logs
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}


def usage_groups(net) -> list:
    """``[(variables, used)]`` for the parts of ``net`` that a subnet may leave unused:
    ``used(dims)`` takes ``[net._dims(slot) for every slot]`` and returns a scalar bool tensor,
    True when some slot runs the part. Blocks past a stage's (or the stem's) minimum depth are
    used when some slot is deeper; a width-changing shortcut conv (block 0 of a conv stage, the
    transition MBConv of a transformer stage) when some slot runs that block with an input width
    different from its output width. Everything else is always used (not listed)."""

    def any_slot(pred):
        return lambda dims: tf.reduce_any(tf.stack([pred(d) for d in dims]))

    groups = []
    dmin = min(net.space.stem.depths)
    for j, blk in enumerate(net.stem_blocks):
        if j >= dmin:
            groups.append((blk.trainable_variables, any_slot(lambda d, j=j: d["stem"][1] > j)))

    def width_in(d, i):
        return d["stem"][0] if i == 0 else d["stages"][i - 1][0]

    for i, (st, blocks) in enumerate(zip(net.space.stages, net.stages)):
        dmin = min(st.depths)
        for j, blk in enumerate(blocks):
            mb = blk.mbconv if st.is_transformer else blk
            shortcut = mb.shortcut if mb is not None else None
            sc_vars = shortcut.trainable_variables if shortcut is not None else []
            sc_ids = {id(v) for v in sc_vars}
            rest = [v for v in blk.trainable_variables if id(v) not in sc_ids]

            def active(d, i=i, j=j):
                return d["stages"][i][1] > j

            if j >= dmin:
                groups.append((rest, any_slot(active)))
            if sc_vars:
                groups.append(
                    (
                        sc_vars,
                        any_slot(
                            lambda d, i=i, a=active: tf.logical_and(
                                a(d), tf.not_equal(width_in(d, i), d["stages"][i][0])
                            )
                        ),
                    )
                )
    return groups


def load_teachers(spec: str, num_classes: int) -> list:
    """Teachers from ``--teacher``: comma-separated ``.keras`` files or ``keras.applications``
    names (ImageNet weights; needs the internet or a populated Keras cache).

    Every teacher must output ``num_classes`` logits (a softmax output layer is undone by the
    caller's temperature only approximately; give logits models).
    """
    if not spec:
        return []
    teachers = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item.endswith(".keras") or item.endswith(".h5"):
            try:
                model = keras.models.load_model(item, compile=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"--teacher {item!r}: cannot load the model: {e}") from None
        else:
            model = _application_teacher(item)
        out = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
        if out is not None and out != num_classes:
            raise ValueError(
                f"--teacher {item!r} outputs {out} classes; the data set has {num_classes}"
            )
        teachers.append(model)
    return teachers


def _application_teacher(name: str) -> keras.Model:
    ctor = getattr(keras.applications, name, None)
    if ctor is None or not callable(ctor):
        raise ValueError(
            f"--teacher {name!r}: not a .keras file and not a keras.applications model "
            "(e.g. ResNet50, EfficientNetV2S)"
        )
    try:
        base = ctor(weights="imagenet", classifier_activation=None)
    except Exception as e:  # noqa: BLE001 - download or cache errors vary
        raise ValueError(f"--teacher {name!r}: could not load ImageNet weights: {e}") from None
    module = __import__(ctor.__module__, fromlist=["preprocess_input"])
    preprocess = getattr(module, "preprocess_input", None)
    size = base.inputs[0].shape[1] or 224
    inputs = keras.Input((None, None, 3))
    # Our pipelines normalise with the ImageNet mean/std; undo that, then apply the
    # application's own preprocessing on [0, 255] pixels.
    mean = tf.constant([0.485, 0.456, 0.406]) * 255.0
    std = tf.constant([0.229, 0.224, 0.225]) * 255.0
    x = keras.layers.Lambda(lambda t: t * std + mean)(inputs)
    x = keras.layers.Resizing(size, size, interpolation="bicubic")(x)
    if preprocess is not None:
        x = keras.layers.Lambda(preprocess)(x)
    return keras.Model(inputs, base(x), name=f"teacher_{name}")

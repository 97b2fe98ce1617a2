"""Optimisation recipe (docs/method.md#training-recipe): AdamW with selective weight decay,
warm-up + cosine LR, adaptive gradient clipping (AGC) and an EMA of the weights.

Differences from the official recipe, on purpose:

* The LR schedule is stepped per optimizer step, not per epoch (same shape: linear warm-up from
  ``warmup_lr`` to ``base_lr``, then ``min_lr + (base_lr - min_lr)(1 + cos(pi t / T)) / 2``
  with t counted from step 0, NOT shifted by the warm-up as in timm, then a cool-down at
  ``min_lr``).
* AGC and the optimizer see the gradient averaged over replicas (the official DDP code clips
  the all-reduced gradient too); see ``recipe.SupernetTrainer``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
import tensorflow as tf

# Official values (docs/method.md#training-recipe), for a global batch of LR_REFERENCE_BATCH images.
OFFICIAL_BASE_LR = 5e-4
OFFICIAL_MIN_LR = 5e-6
OFFICIAL_WARMUP_LR = 1e-6
LR_REFERENCE_BATCH = 512
OFFICIAL_WEIGHT_DECAY = 0.05
OFFICIAL_EMA_DECAY = 0.99985
AGC_CLIP = 0.1
AGC_EPS = 1e-3


def scale_lr(lr: float, global_batch_size: int, reference_batch: int = LR_REFERENCE_BATCH) -> float:
    """Linear scaling rule ``lr * global_batch / reference`` (``reference <= 0``: unscaled)."""
    if reference_batch <= 0:
        return float(lr)
    return float(lr) * global_batch_size / reference_batch


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, cosine decay, then a constant cool-down (per step).

    Args:
        base_lr: peak learning rate.
        total_steps: length of the whole schedule (warm-up and cool-down included).
        warmup_steps: steps of linear warm-up from ``warmup_lr`` to ``base_lr``.
        warmup_lr: learning rate at step 0.
        min_lr: floor of the cosine and the cool-down learning rate.
        cooldown_steps: final steps held at ``min_lr``.
    """

    def __init__(
        self,
        base_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_lr: float = 0.0,
        min_lr: float = 0.0,
        cooldown_steps: int = 0,
    ):
        if total_steps < 1 or warmup_steps < 0 or cooldown_steps < 0:
            raise ValueError(
                f"WarmupCosine: total_steps={total_steps}, warmup_steps={warmup_steps}, "
                f"cooldown_steps={cooldown_steps}; expected total >= 1 and the others >= 0"
            )
        if warmup_steps + cooldown_steps >= total_steps and total_steps > 1:
            raise ValueError(
                f"WarmupCosine: warmup_steps ({warmup_steps}) + cooldown_steps "
                f"({cooldown_steps}) must be < total_steps ({total_steps})"
            )
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.cooldown_steps = int(cooldown_steps)
        # The traced step reads the length from here, so a time box can re-plan it mid-run
        # (``replan``) without a retrace; a plain run never changes it.
        self._cos_len = tf.Variable(
            float(max(self.total_steps - self.cooldown_steps, 1)),
            trainable=False,
            dtype=tf.float32,
            name="cosine_length",
        )

    def replan(self, total_steps: int) -> None:
        """Sets the schedule's total length (warm-up and cool-down kept)."""
        if total_steps <= self.warmup_steps + self.cooldown_steps and total_steps > 1:
            raise ValueError(
                f"replan: total_steps={total_steps} must exceed warmup_steps + cooldown_steps "
                f"({self.warmup_steps + self.cooldown_steps})"
            )
        self.total_steps = int(total_steps)
        self._cos_len.assign(float(max(self.total_steps - self.cooldown_steps, 1)))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        base, lo = self.base_lr, self.min_lr
        cos_len = tf.convert_to_tensor(self._cos_len)
        t = tf.minimum(step, cos_len)
        cosine = lo + 0.5 * (base - lo) * (1.0 + tf.cos(math.pi * t / cos_len))
        if self.warmup_steps > 0:
            warm = self.warmup_lr + step * (base - self.warmup_lr) / self.warmup_steps
            return tf.where(step < self.warmup_steps, warm, cosine)
        return cosine

    def value(self, step: int) -> float:
        """Pure-Python value at ``step`` (for logs and tests)."""
        cos_len = max(self.total_steps - self.cooldown_steps, 1)
        if step < self.warmup_steps:
            return self.warmup_lr + step * (self.base_lr - self.warmup_lr) / self.warmup_steps
        t = min(step, cos_len)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
            1 + math.cos(math.pi * t / cos_len)
        )

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_lr": self.warmup_lr,
            "min_lr": self.min_lr,
            "cooldown_steps": self.cooldown_steps,
        }


# ------------------------------------------------------------------------------ weight decay
def split_weight_decay(net) -> tuple[list, list]:
    """``(decay, no_decay)`` lists of the supernet's trainable variables
    (docs/method.md#training-recipe).

    The decay set comes from ``net.weight_decay_variables()`` (transformer linears, relative
    position tables, V depthwise convs, head linears, classifier); everything else trainable
    (MBConvs, first conv, norms, biases) is not decayed.
    """
    decay_ids = {id(v) for v in net.weight_decay_variables()}
    decay, no_decay = [], []
    for v in net.trainable_variables:
        (decay if id(v) in decay_ids else no_decay).append(v)
    return decay, no_decay


class FusedAdamW(keras.optimizers.AdamW):
    """Keras AdamW whose per-variable update is one fused kernel (``ResourceApplyAdam``).

    Keras' own ``update_step`` builds about ten element-wise ops per variable, each a pass over
    memory with a temporary; the fused kernel reads ``g, m, v, w`` once and writes ``m, v, w``
    once (same formula: ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t)``, ``m += (g - m)(1 - b1)``,
    ``v += (g^2 - v)(1 - b2)``, ``w -= alpha m / (sqrt(v) + eps)``; the decoupled weight
    decay ``w -= lr wd w`` stays Keras'). Measured in benchmarks/README.md#supernet_steppy.

    ``skip_mask``: when set (a dict ``variable key -> scalar bool tensor``, written by the
    train step while tracing), a variable whose mask is False gets no update at all that step:
    no decay, no moment update (``--skip_unused_updates``, docs/method.md#training-recipe).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_mask = None

    def _mask_of(self, variable):
        if not self.skip_mask:
            return None
        return self.skip_mask.get(self._var_key(variable))

    def _masked(self, variable, fn):
        mask = self._mask_of(variable)
        if mask is None:
            return fn()
        return tf.cond(mask, lambda: _grouped(fn()), tf.no_op)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return

        def apply(distribution, variables):
            def decay_fn(variable):
                if self._use_weight_decay(variable):
                    lr = tf.cast(self.learning_rate, variable.dtype)
                    wd = tf.cast(self.weight_decay, variable.dtype)
                    return self._masked(variable, lambda: variable.assign_sub(variable * wd * lr))
                return None

            for variable in variables:
                variable = _tf_variable(variable)
                distribution.extended.update(variable, decay_fn, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            apply, self._distribution_strategy, variables
        )

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or keras.backend.backend() != "tensorflow":
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v, var = (
            _tf_variable(x) for x in (self._momentums[index], self._velocities[index], variable)
        )
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)

        def apply():
            return tf.raw_ops.ResourceApplyAdam(
                var=var.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=tf.pow(b1, step),
                beta2_power=tf.pow(b2, step),
                lr=tf.cast(learning_rate, dtype),
                beta1=b1,
                beta2=b2,
                epsilon=tf.cast(self.epsilon, dtype),
                grad=tf.cast(gradient, dtype),
                use_locking=False,
            )

        return self._masked(variable, apply)


def _tf_variable(v):
    return v.value if isinstance(v, keras.Variable) else v


def _grouped(op):
    return tf.group(op) if op is not None else tf.no_op()


def make_optimizer(
    net,
    learning_rate,
    weight_decay: float = OFFICIAL_WEIGHT_DECAY,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
) -> keras.optimizers.AdamW:
    """AdamW (``FusedAdamW``) that decays only ``net.weight_decay_variables()``; built on the
    net's variables."""
    opt = FusedAdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
    )
    _, no_decay = split_weight_decay(net)
    if no_decay:
        opt.exclude_from_weight_decay(var_list=no_decay)
    opt.build(net.trainable_variables)
    return opt


# ------------------------------------------------------------------------------ AGC
def unit_axis(shape: Sequence[int]) -> Optional[int]:
    """Output-unit axis of a Keras weight (None: the tensor is one unit).

    Keras kernels keep outputs last (conv ``[kh, kw, in, out]``, dense ``[in, out]``,
    relative-position table ``[N, heads]``); a depthwise kernel ``[kh, kw, C, 1]`` has its
    units on axis 2. These are PyTorch's dim-0 units used by timm's ``unitwise_norm``.
    """
    rank = len(shape)
    if rank <= 1:
        return None
    if rank == 4 and shape[-1] == 1:
        return 2
    return rank - 1


def unitwise_norm(x, axis: Optional[int]):
    """L2 norm per output unit, broadcastable to ``x`` (whole-tensor norm when axis is None)."""
    if axis is None:
        return tf.norm(x)
    reduce = [i for i in range(len(x.shape)) if i != axis]
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=reduce, keepdims=True))


def adaptive_clip_gradients(grads, variables, clip: float = AGC_CLIP, eps: float = AGC_EPS):
    """Unit-wise AGC (Brock et al. 2021; timm ``adaptive_clip_grad``).

    Per unit: ``max_norm = clip * max(||w||, eps)``; a gradient whose norm exceeds it is
    rescaled to exactly ``max_norm``; others pass unchanged.
    """
    out = []
    for g, v in zip(grads, variables):
        if g is None:
            out.append(None)
            continue
        w = tf.convert_to_tensor(v)
        axis = unit_axis(tuple(w.shape))
        max_norm = clip * tf.maximum(unitwise_norm(w, axis), eps)
        g_norm = unitwise_norm(g, axis)
        scale = tf.minimum(max_norm / tf.maximum(g_norm, 1e-6), 1.0)  # exactly 1: unclipped
        out.append(g * scale)  # one pass (no tf.where over the whole tensor)
    return out


# ------------------------------------------------------------------------------ EMA
def ema_decay_at(decay: float, num_updates=None, warmup: bool = False):
    """The decay used at an update; with ``warmup`` min(decay, (1 + n) / (10 + n)) as
    ``tf.train.ExponentialMovingAverage(num_updates=n)`` (short runs track the live weights)."""
    if not warmup or num_updates is None:
        return tf.constant(decay, tf.float32)
    n = tf.cast(num_updates, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + n) / (10.0 + n))


def ema_update(shadows, variables, decay) -> None:
    """``shadow <- decay * shadow + (1 - decay) * live`` for every pair."""
    for s, v in zip(shadows, variables):
        live = tf.convert_to_tensor(v)
        d = tf.cast(decay, s.dtype)
        s.assign(d * s + (1.0 - d) * tf.cast(live, s.dtype))


# ------------------------------------------------------------------------------ fused update
class FusedUpdate:
    """AGC, AdamW (``FusedAdamW``'s formula, decoupled decay first) and the EMA of the weights
    in ONE XLA-compiled function over every variable, so each variable's elements are read and
    written once per step: XLA fuses the per-variable chain (AGC scale, decay, moments, weight,
    shadow) into one loop, where the TensorFlow kernels of the same maths make separate
    passes over the 40.5 M super-weights (benchmarks/README.md#supernet_steppy). Same updates
    up to float rounding (<= 1e-6 after several steps; tests/test_optim.py).

    Used by ``recipe.SupernetTrainer`` where ``supported``: a ``FusedAdamW`` without loss
    scaling, AMSGrad, clipping, gradient accumulation or Keras' own EMA, under one replica
    (the multi-replica strategies keep the Keras update path and its cross-replica logic).
    The compiled function sees only full-size variables, so it is compiled once for every
    subnet.

    Args:
        optimizer: the ``FusedAdamW`` (its iterations, schedule, betas, epsilon, decay set).
        variables: the trainable variables, in the gradients' order.
        agc_clip / agc_eps: AGC (``adaptive_clip_gradients``; ``agc_clip <= 0``: off).
        ema_shadows / ema_sources: the EMA pairs (empty: no EMA).
    """

    def __init__(self, optimizer, variables, agc_clip, agc_eps, ema_shadows=(), ema_sources=()):
        self.optimizer = optimizer
        self.variables = [_tf_variable(v) for v in variables]
        self.agc_clip, self.agc_eps = float(agc_clip), float(agc_eps)
        self.ema_pairs = [(s, _tf_variable(v)) for s, v in zip(ema_shadows, ema_sources)]
        index = [optimizer._get_variable_index(v) for v in variables]
        self.slots = [
            (_tf_variable(optimizer._momentums[i]), _tf_variable(optimizer._velocities[i]))
            for i in index
        ]
        wd = optimizer.weight_decay
        self.decay = [wd is not None and optimizer._use_weight_decay(v) for v in variables]
        self._fn = tf.function(self._apply, jit_compile=True)

    @staticmethod
    def supported(optimizer, num_replicas: int) -> bool:
        return (
            isinstance(optimizer, FusedAdamW)
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            and int(num_replicas) == 1
            and not optimizer.amsgrad
            and not optimizer.use_ema
            and not optimizer.gradient_accumulation_steps
            and optimizer.clipnorm is None
            and optimizer.clipvalue is None
            and optimizer.global_clipnorm is None
            and keras.backend.backend() == "tensorflow"
        )

    def __call__(self, grads, ema_decay=None, masks=None):
        """Applies ``grads``; ``ema_decay``: the EMA's decay at the new step (needed when
        there is an EMA); ``masks``: ``{variable position: scalar bool}``, False = no AdamW
        update nor decay for that variable this step (``--skip_unused_updates``)."""
        opt = self.optimizer
        lr = tf.cast(opt.learning_rate, tf.float32)
        step = tf.cast(opt.iterations + 1, tf.float32)
        masks = masks or {}
        positions = sorted(masks)
        decay = tf.constant(0.0) if ema_decay is None else tf.cast(ema_decay, tf.float32)
        op = self._fn(list(grads), lr, step, decay, [masks[p] for p in positions], positions)
        with tf.control_dependencies([op] if op is not None else []):
            return opt.iterations.assign_add(1)

    def _apply(self, grads, lr, step, ema_decay, mask_values, positions):
        opt = self.optimizer
        b1, b2, eps = float(opt.beta_1), float(opt.beta_2), float(opt.epsilon)
        alpha = lr * tf.sqrt(1.0 - tf.pow(b2, step)) / (1.0 - tf.pow(b1, step))
        wd = float(opt.weight_decay or 0.0)
        mask_of = dict(zip(positions, mask_values))
        for i, (g, var) in enumerate(zip(grads, self.variables)):
            w = var.read_value()
            dtype = w.dtype
            g = tf.cast(g, dtype)
            if self.agc_clip > 0:
                axis = unit_axis(tuple(w.shape))
                max_norm = self.agc_clip * tf.maximum(unitwise_norm(w, axis), self.agc_eps)
                g = g * tf.minimum(max_norm / tf.maximum(unitwise_norm(g, axis), 1e-6), 1.0)
            m, v = self.slots[i]
            m_old, v_old = m.read_value(), v.read_value()
            w_new = w
            if self.decay[i]:
                w_new = w_new - w_new * tf.cast(wd, dtype) * tf.cast(lr, dtype)
            m_new = m_old + (g - m_old) * (1.0 - b1)
            v_new = v_old + (tf.square(g) - v_old) * (1.0 - b2)
            w_new = w_new - (m_new * tf.cast(alpha, dtype)) / (tf.sqrt(v_new) + eps)
            if i in mask_of:  # a select, not a conditional: XLA keeps the loop fused
                keep = tf.logical_not(mask_of[i])
                m_new = tf.where(keep, m_old, m_new)
                v_new = tf.where(keep, v_old, v_new)
                w_new = tf.where(keep, w, w_new)
            m.assign(m_new)
            v.assign(v_new)
            var.assign(w_new)
        for s, src in self.ema_pairs:
            d = tf.cast(ema_decay, s.dtype)
            s.assign(d * s + (1.0 - d) * tf.cast(src.read_value(), s.dtype))
        return tf.constant(True)


# ------------------------------------------------------------------------------ diagnostics
def flat_cosine(a: Sequence, b: Sequence):
    """Cosine similarity of two gradient lists seen as one flat vector each."""
    dot, na, nb = 0.0, 0.0, 0.0
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        dot += tf.reduce_sum(x * y)
        na += tf.reduce_sum(x * x)
        nb += tf.reduce_sum(y * y)
    return dot / tf.maximum(tf.sqrt(na) * tf.sqrt(nb), 1e-12)

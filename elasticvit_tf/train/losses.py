"""Training losses (docs/method.md#losses), TF ops usable inside a traced train step.

* ``soft_target_cross_entropy``: the uniform subnets against the teacher ensemble.
* ``teacher_probs``: mean of softmax(z / T) over teachers (T = 0.2 sharpens, student at T = 1).
* ``adaptive_alpha_divergence``: AlphaNet's adaptive alpha-divergence for the min subnet
  against the mean prediction of the other subnets (alpha in {-1, +1}, weight clip 5).
* ``label_smoothed_cross_entropy``: label-only training (no teacher).

Every loss takes ``reduction="mean"`` (a scalar, the default) or ``"none"`` (per example, (B,)).
Targets are always detached (``tf.stop_gradient``).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

_REDUCTIONS = ("mean", "none")


def _reduce(per_example: tf.Tensor, reduction: str) -> tf.Tensor:
    if reduction == "mean":
        return tf.reduce_mean(per_example)
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction={reduction!r}; expected one of {_REDUCTIONS}")


def soft_target_cross_entropy(target_probs, logits, reduction: str = "mean") -> tf.Tensor:
    """-sum_c p_c log softmax(z)_c per example; ``target_probs`` (B, C) is detached."""
    logits = tf.cast(logits, tf.float32)
    p = tf.stop_gradient(tf.cast(target_probs, tf.float32))
    per_example = -tf.reduce_sum(p * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    return _reduce(per_example, reduction)


def teacher_probs(teacher_logits_list: Sequence, temperature: float = 0.2) -> tf.Tensor:
    """Ensemble target: mean over teachers of softmax(z_t / T), detached, (B, C)."""
    if not isinstance(teacher_logits_list, (list, tuple)):
        teacher_logits_list = [teacher_logits_list]
    if not teacher_logits_list:
        raise ValueError("teacher_probs: got no teacher logits; expected at least one (B, C)")
    if not temperature > 0:
        raise ValueError(f"teacher_probs: temperature={temperature!r}; expected > 0")
    probs = [
        tf.nn.softmax(tf.cast(z, tf.float32) / temperature, axis=-1) for z in teacher_logits_list
    ]
    return tf.stop_gradient(tf.add_n(probs) / float(len(probs)))


def label_smoothed_cross_entropy(
    labels, logits, smoothing: float = 0.1, reduction: str = "mean"
) -> tf.Tensor:
    """CE against (1 - eps) * one_hot + eps / C for integer ``labels`` (B,)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing={smoothing!r}; expected 0 <= smoothing < 1")
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    logp = tf.nn.log_softmax(logits, axis=-1)
    nll = -tf.gather(logp, labels, axis=-1, batch_dims=1)
    smooth = -tf.reduce_mean(logp, axis=-1)
    return _reduce((1.0 - smoothing) * nll + smoothing * smooth, reduction)


# --------------------------------------------------------------------- alpha-divergence
def _alpha_terms(log_q, log_p, p, alpha: float, clip: float):
    """Per-example divergence D_alpha (no grad) and the weights rho of the surrogate.

    With q the student's probs and w = p / q (all detached):
      * alpha = 1 (KL, no clipping): D = sum_c p log(p / q) = KL(p || q), rho = w;
      * alpha = 0: u = clip(w, 0, clip), D = sum_c q (-log u), rho = log u - 1;
      * otherwise: u = clip(w^alpha, 0, clip), f0 = 1 / (alpha (alpha - 1)),
        D = sum_c q (u - 1) f0, rho = u / alpha + f0.
    The surrogate L = -sum_c stop(q rho) log q then has the gradient of D w.r.t. the logits
    (exactly, where no clipping is active).
    """
    q = tf.exp(log_q)
    log_w = log_p - log_q
    if abs(alpha - 1.0) < 1e-6:
        # NOTE: p = 0 gives 0 * log 0 = NaN in the official code, which then always picks this
        # branch; here 0 log 0 = 0 so both divergences stay finite and comparable.
        d = tf.reduce_sum(tf.where(p > 0, p * log_w, tf.zeros_like(p)), axis=-1)
        rho = tf.exp(log_w)
        return d, rho
    if abs(alpha) < 1e-6:
        u = tf.clip_by_value(tf.exp(log_w), 0.0, clip)
        log_u = tf.math.log(tf.maximum(u, 1e-30))
        return tf.reduce_sum(q * (-log_u), axis=-1), log_u - 1.0
    # w^alpha in log space; p = 0 with alpha < 0 gives +inf, clipped to `clip`.
    u = tf.clip_by_value(tf.exp(alpha * log_w), 0.0, clip)
    f0 = 1.0 / (alpha * (alpha - 1.0))
    d = tf.reduce_sum(q * (u - 1.0) * f0, axis=-1)
    return d, u / alpha + f0


def alpha_divergence(
    student_logits, target_probs, alpha: float, clip: float = 5.0, reduction: str = "none"
) -> tf.Tensor:
    """The (importance-weight clipped) alpha-divergence value D_alpha(p || q), no gradient."""
    log_q = tf.stop_gradient(tf.nn.log_softmax(tf.cast(student_logits, tf.float32), axis=-1))
    p = tf.stop_gradient(tf.cast(target_probs, tf.float32))
    d, _ = _alpha_terms(log_q, _safe_log(p), p, float(alpha), float(clip))
    return _reduce(d, reduction)


def _safe_log(p):
    return tf.where(p > 0, tf.math.log(tf.maximum(p, 1e-38)), tf.fill(tf.shape(p), -float("inf")))


def adaptive_alpha_divergence(
    student_logits,
    target_probs,
    alpha_min: float = -1.0,
    alpha_max: float = 1.0,
    clip: float = 5.0,
    reduction: str = "mean",
    return_divergence: bool = False,
):
    """AlphaNet's adaptive alpha-divergence (docs/method.md#losses): the surrogate loss.

    For each example both D_{alpha_min} and D_{alpha_max} are computed (no gradient) and the
    branch with the larger divergence is used: L = -sum_c stop(q rho) log q, whose gradient
    w.r.t. the student logits is the gradient of the chosen alpha-divergence (with the
    importance weights clipped at ``clip``). The value of L itself is not a divergence (it
    can be negative); pass ``return_divergence=True`` to also get the chosen D (for logging).

    Args:
        student_logits: (B, C) logits of the distilled (min) subnet.
        target_probs: (B, C) target probabilities (mean of the other subnets), detached.
        alpha_min, alpha_max: the two alphas (-1 and +1 officially).
        clip: upper clip of the importance weights w^alpha (5 officially).
        reduction: "mean" or "none".
        return_divergence: also return the per-example (or mean) chosen divergence.
    """
    logits = tf.cast(student_logits, tf.float32)
    log_q_grad = tf.nn.log_softmax(logits, axis=-1)
    log_q = tf.stop_gradient(log_q_grad)
    p = tf.stop_gradient(tf.cast(target_probs, tf.float32))
    log_p = _safe_log(p)
    q = tf.exp(log_q)
    d_lo, rho_lo = _alpha_terms(log_q, log_p, p, float(alpha_min), float(clip))
    d_hi, rho_hi = _alpha_terms(log_q, log_p, p, float(alpha_max), float(clip))
    # NOTE: NaN guard: a non-finite divergence never wins the comparison, and its branch's
    # weights are zeroed if it is the only one left.
    d_lo = tf.where(tf.math.is_finite(d_lo), d_lo, tf.fill(tf.shape(d_lo), -float("inf")))
    d_hi = tf.where(tf.math.is_finite(d_hi), d_hi, tf.fill(tf.shape(d_hi), -float("inf")))
    use_lo = d_lo > d_hi
    rho = tf.where(use_lo[:, None], rho_lo, rho_hi)
    weights = tf.stop_gradient(q * rho)
    weights = tf.where(tf.math.is_finite(weights), weights, tf.zeros_like(weights))
    loss = -tf.reduce_sum(weights * log_q_grad, axis=-1)
    loss = _reduce(loss, reduction)
    if return_divergence:
        return loss, _reduce(tf.maximum(d_lo, d_hi), reduction)
    return loss

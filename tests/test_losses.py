"""Tests for elasticvit_tf.train.losses: hand-computed values and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf.train import losses


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_alpha(z, p, alpha, clip=5.0):
    """Divergence D and surrogate weights a = q * rho, straight from docs/method.md#losses
    (float64)."""
    q = _softmax(z)
    p = np.asarray(p, np.float64)
    w = p / q
    if alpha == 1.0:
        return np.sum(p * np.log(w), -1), q * w
    u = np.clip(w**alpha, 0, clip)
    f0 = 1.0 / (alpha * (alpha - 1.0))
    return np.sum(q * (u - 1.0) * f0, -1), q * (u / alpha + f0)


# ------------------------------------------------------------------------ simple losses
def test_soft_target_cross_entropy_values():
    z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    p = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]], np.float32)
    expected = -np.sum(p * np.log(_softmax(z)), -1)
    got = losses.soft_target_cross_entropy(p, z, reduction="none").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[1] == pytest.approx(np.log(3.0), rel=1e-6)  # uniform student, one-hot target
    mean = losses.soft_target_cross_entropy(p, z).numpy()
    assert mean == pytest.approx(expected.mean(), rel=1e-6)


def test_soft_target_gradient_is_q_minus_p_and_target_detached():
    z = tf.Variable([[1.0, -0.5, 0.25]])
    p = tf.Variable([[0.2, 0.5, 0.3]])
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.soft_target_cross_entropy(p, z)
    np.testing.assert_allclose(
        tape.gradient(loss, z).numpy(), _softmax(z.numpy()) - p.numpy(), atol=1e-6
    )
    assert tape.gradient(loss, p) is None


def test_teacher_probs_temperature_and_ensemble():
    t1 = np.array([[1.0, 0.0]], np.float32)
    t2 = np.array([[0.0, 0.4]], np.float32)
    got = losses.teacher_probs([t1, t2], temperature=0.2).numpy()
    expected = 0.5 * _softmax(t1 / 0.2) + 0.5 * _softmax(t2 / 0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # softmax([5, 0]) = [0.993307, 0.006693]; softmax([0, 2]) = [0.119203, 0.880797]
    np.testing.assert_allclose(got[0], [0.556255, 0.443745], atol=1e-6)
    np.testing.assert_allclose(losses.teacher_probs(t1, 1.0).numpy(), _softmax(t1), rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        losses.teacher_probs([t1], temperature=0.0)
    with pytest.raises(ValueError, match="at least one"):
        losses.teacher_probs([])


def test_label_smoothed_cross_entropy():
    z = np.array([[2.0, 0.0, -1.0, 0.5]], np.float32)
    logq = np.log(_softmax(z))[0]
    got = losses.label_smoothed_cross_entropy(np.array([2]), z, 0.1).numpy()
    target = np.full(4, 0.1 / 4)
    target[2] += 0.9
    assert got == pytest.approx(-np.sum(target * logq), rel=1e-6)
    plain = losses.label_smoothed_cross_entropy(np.array([2]), z, 0.0).numpy()
    assert plain == pytest.approx(-logq[2], rel=1e-6)
    with pytest.raises(ValueError, match="smoothing"):
        losses.label_smoothed_cross_entropy(np.array([2]), z, 1.0)
    with pytest.raises(ValueError, match="reduction"):
        losses.label_smoothed_cross_entropy(np.array([2]), z, 0.1, reduction="sum")


# --------------------------------------------------------------------- alpha-divergence
# Values computed by hand from the spec formulas (float64, 6 decimals).
# Row 0: q = [0.5, 0.5], p = [0.8, 0.2]: D_-1 = 0.28125 > KL = 0.192745 -> alpha = -1 branch.
#        (u = q/p = [0.625, 2.5]; D_-1 = 0.5 * (-0.375) / 2 + 0.5 * 1.5 / 2.)
# Row 1: q = softmax([2, 0]) = [0.880797, 0.119203], p = [0.1, 0.9]: q/p = [8.808, 0.132]
#        is clipped to [5, 0.132]: D_-1 = 1.709887 > KL = 1.601845 -> alpha = -1, clip active.
# Row 2: q = softmax([1.5, 0]) = [0.817574, 0.182426], p = [0.5, 0.5]:
#        D_-1 = 0.201707 < KL = 0.258266 -> KL branch.
Z = np.array([[0.0, 0.0], [2.0, 0.0], [1.5, 0.0]], np.float32)
P = np.array([[0.8, 0.2], [0.1, 0.9], [0.5, 0.5]], np.float32)
D_MINUS = np.array([0.28125, 1.709887, 0.201707])
D_KL = np.array([0.192745, 1.601845, 0.258266])


def test_alpha_divergence_hand_values():
    np.testing.assert_allclose(losses.alpha_divergence(Z, P, -1.0).numpy(), D_MINUS, atol=2e-6)
    np.testing.assert_allclose(losses.alpha_divergence(Z, P, 1.0).numpy(), D_KL, atol=2e-6)
    for alpha in (-1.0, 1.0, 0.5, -0.5):
        d_np, _ = _np_alpha(Z, P, alpha)
        d_tf = losses.alpha_divergence(Z, P, alpha).numpy()
        np.testing.assert_allclose(d_tf, d_np, rtol=1e-5, atol=1e-6)


def test_adaptive_alpha_divergence_branches_values():
    loss, div = losses.adaptive_alpha_divergence(Z, P, reduction="none", return_divergence=True)
    np.testing.assert_allclose(div.numpy(), np.maximum(D_MINUS, D_KL), atol=2e-6)
    logq = np.log(_softmax(Z))
    # Row 0: rho = 1/2 - u = [-0.125, -2.0]; L = -sum q rho log q = -(0.0625 + 1.0) * ln 2.
    assert loss.numpy()[0] == pytest.approx(-1.0625 * np.log(2.0), abs=1e-6)
    # Row 1 (clip): u = [5, 0.119203 / 0.9]; rho = 1/2 - u.
    q1 = _softmax(Z[1])
    u1 = np.array([5.0, q1[1] / 0.9])
    assert loss.numpy()[1] == pytest.approx(-np.sum(q1 * (0.5 - u1) * logq[1]), abs=1e-5)
    # Row 2 (KL branch): L = -sum p log q = CE(p, q).
    assert loss.numpy()[2] == pytest.approx(-np.sum(P[2] * logq[2]), abs=1e-6)
    mean = losses.adaptive_alpha_divergence(Z, P).numpy()
    assert mean == pytest.approx(loss.numpy().mean(), rel=1e-6)


def test_adaptive_alpha_gradient_matches_analytic_formula():
    z = tf.Variable(Z)
    with tf.GradientTape() as tape:
        loss = losses.adaptive_alpha_divergence(z, P, reduction="none")
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, z).numpy()
    q = _softmax(Z)
    for row, alpha in ((0, -1.0), (1, -1.0), (2, 1.0)):
        _, a = _np_alpha(Z[row : row + 1], P[row : row + 1], alpha)
        a = a[0]
        # dL/dz_j = -a_j + q_j sum_c a_c  for L = -sum_c stop(a_c) log q_c
        expected = -a + q[row] * a.sum()
        np.testing.assert_allclose(grad[row], expected, atol=1e-6)


@pytest.mark.parametrize("alpha", [-1.0, 1.0])
def test_alpha_surrogate_gradient_equals_divergence_gradient(alpha):
    """Where no clipping is active, grad of the surrogate = grad of D_alpha (finite diffs)."""
    rng = np.random.default_rng(0)
    z0 = 0.5 * rng.normal(size=(4, 5))
    p = _softmax(0.5 * rng.normal(size=(4, 5)))
    assert np.all(_softmax(z0) / p < 5.0)  # clip inactive for this draw
    z = tf.Variable(z0.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(
            losses.adaptive_alpha_divergence(
                z, p, alpha_min=alpha, alpha_max=alpha, reduction="none"
            )
        )
    grad = tape.gradient(loss, z).numpy()
    eps = 1e-6
    fd = np.zeros_like(z0)
    for i in range(z0.shape[0]):
        for j in range(z0.shape[1]):
            zp, zm = z0.copy(), z0.copy()
            zp[i, j] += eps
            zm[i, j] -= eps
            fd[i, j] = (_np_alpha(zp[i], p[i], alpha)[0] - _np_alpha(zm[i], p[i], alpha)[0]) / (
                2 * eps
            )
    np.testing.assert_allclose(grad, fd, atol=2e-5)


def test_adaptive_alpha_target_detached_and_zero_target_guard():
    z = tf.Variable([[3.0, -2.0, 0.5]])
    p = tf.Variable([[0.0, 0.6, 0.4]])  # p = 0: the official code's KL term is NaN here
    with tf.GradientTape(persistent=True) as tape:
        loss, div = losses.adaptive_alpha_divergence(z, p, return_divergence=True)
    assert np.isfinite(loss.numpy()) and np.isfinite(div.numpy())
    g = tape.gradient(loss, z).numpy()
    assert np.all(np.isfinite(g))
    assert tape.gradient(loss, p) is None
    # q/p = inf in class 0 -> clipped to 5; D_-1 = sum q (u - 1) / 2 with u = min(q/p, 5)
    q = _softmax(z.numpy())[0]
    u = np.minimum(
        np.divide(q, [0.0, 0.6, 0.4], where=[False, True, True], out=np.full(3, np.inf)), 5
    )
    d_minus = np.sum(q * (u - 1) / 2)
    kl = 0.6 * np.log(0.6 / q[1]) + 0.4 * np.log(0.4 / q[2])
    assert float(div.numpy()) == pytest.approx(max(d_minus, kl), rel=1e-5)


def test_adaptive_alpha_identical_distributions_zero_gradient():
    z = tf.Variable([[0.3, -1.2, 2.0]])
    p = tf.nn.softmax(z).numpy()
    with tf.GradientTape() as tape:
        loss, div = losses.adaptive_alpha_divergence(z, p, return_divergence=True)
    assert abs(float(div)) < 1e-6
    np.testing.assert_allclose(tape.gradient(loss, z).numpy(), 0.0, atol=1e-6)


def test_losses_trace_in_tf_function():
    @tf.function
    def f(z, p):
        return losses.adaptive_alpha_divergence(z, p) + losses.soft_target_cross_entropy(p, z)

    v = f(tf.constant(Z), tf.constant(P)).numpy()
    assert np.isfinite(v)

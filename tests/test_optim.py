"""Recipe pieces of elasticvit_tf.train.optim against hand-computed values."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf.train import optim


# ------------------------------------------------------------------------ LR schedule
def test_warmup_cosine_at_chosen_steps():
    # base 1.0, 110 steps: 10 warm-up from 0.1, cosine over the first 100 steps (t counted from
    # step 0, not shifted by the warm-up), then 10 cool-down steps at min_lr 0.0.
    s = optim.WarmupCosine(1.0, 110, warmup_steps=10, warmup_lr=0.1, min_lr=0.0, cooldown_steps=10)
    expected = {
        0: 0.1,
        5: 0.55,  # 0.1 + 5 * (1 - 0.1) / 10
        10: 0.5 * (1 + math.cos(math.pi * 10 / 100)),  # 0.9755283
        50: 0.5,
        100: 0.0,
        105: 0.0,
    }
    for step, want in expected.items():
        assert s.value(step) == pytest.approx(want, abs=1e-7)
        assert float(s(step)) == pytest.approx(want, abs=1e-6)
    assert expected[10] == pytest.approx(0.97552826, abs=1e-7)


def test_warmup_cosine_min_lr_floor_and_validation():
    s = optim.WarmupCosine(2e-3, 1000, min_lr=2e-5)
    assert s.value(0) == pytest.approx(2e-3)
    assert s.value(500) == pytest.approx(2e-5 + 0.5 * (2e-3 - 2e-5))
    assert s.value(1000) == pytest.approx(2e-5)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.WarmupCosine(1.0, 10, warmup_steps=8, cooldown_steps=2)


def test_scale_lr_linear_rule():
    # docs/method.md#training-recipe: 5e-4 * (32 GPUs * 96) / 512 = 3e-3
    assert optim.scale_lr(5e-4, 32 * 96) == pytest.approx(3e-3)
    assert optim.scale_lr(5e-4, 128, reference_batch=0) == 5e-4


# ------------------------------------------------------------------------ AGC
def test_unit_axis():
    assert optim.unit_axis((5,)) is None
    assert optim.unit_axis((4, 6)) == 1  # dense [in, out]
    assert optim.unit_axis((3, 3, 4, 8)) == 3  # conv [kh, kw, in, out]
    assert optim.unit_axis((3, 3, 8, 1)) == 2  # depthwise [kh, kw, C, 1]
    assert optim.unit_axis((49, 4)) == 1  # relative-position table [N, heads]


def test_agc_rescale_hand_computed():
    # Dense kernel [in=2, out=2]: units are columns.
    #   col 0: ||w|| = 5 -> max 0.5; g = (0.6, 0.8), ||g|| = 1 -> rescaled to (0.3, 0.4).
    #   col 1: ||w|| = 1e-4 < eps 1e-3 -> max 1e-4; g = (0.1, 0), ||g|| = 0.1 -> (1e-4, 0).
    w = tf.constant([[3.0, 1e-4], [4.0, 0.0]])
    g = tf.constant([[0.6, 0.1], [0.8, 0.0]])
    # Bias (1-D, whole tensor): ||w|| = 0 -> max 1e-4; ||g|| = 5e-5 < 1e-4 -> unchanged.
    b = tf.constant([0.0, 0.0])
    gb = tf.constant([3e-5, 4e-5])
    # Depthwise [1, 1, 2, 1] (units on axis 2): channel 0 w = 2 -> max 0.2, g = 0.1 unchanged;
    # channel 1 w = 1 -> max 0.1, g = -0.5 -> -0.1.
    dw = tf.constant([[[[2.0], [1.0]]]])
    gdw = tf.constant([[[[0.1], [-0.5]]]])
    out = optim.adaptive_clip_gradients([g, gb, gdw, None], [w, b, dw, w])
    np.testing.assert_allclose(out[0].numpy(), [[0.3, 1e-4], [0.4, 0.0]], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(out[1].numpy(), [3e-5, 4e-5], rtol=1e-6)
    np.testing.assert_allclose(out[2].numpy(), [[[[0.1], [-0.1]]]], rtol=1e-5)
    assert out[3] is None


# ------------------------------------------------------------------------ EMA
def test_ema_update_and_warmup_decay():
    shadow = [tf.Variable([1.0, 2.0])]
    live = [tf.Variable([3.0, 2.0])]
    optim.ema_update(shadow, live, 0.9)
    np.testing.assert_allclose(shadow[0].numpy(), [1.2, 2.0], rtol=1e-6)  # 0.9*1 + 0.1*3
    assert float(optim.ema_decay_at(0.999, 0, warmup=True)) == pytest.approx(0.1)  # 1/10
    assert float(optim.ema_decay_at(0.999, 90, warmup=True)) == pytest.approx(0.91)  # 91/100
    assert float(optim.ema_decay_at(0.999, 10**6, warmup=True)) == pytest.approx(0.999)
    assert float(optim.ema_decay_at(0.999, 0, warmup=False)) == pytest.approx(0.999)


def test_flat_cosine():
    a = [tf.constant([1.0, 0.0]), tf.constant([0.0])]
    b = [tf.constant([1.0, 1.0]), tf.constant([0.0])]
    assert float(optim.flat_cosine(a, b)) == pytest.approx(1 / math.sqrt(2))
    assert float(optim.flat_cosine(a, [-x for x in a])) == pytest.approx(-1.0)


# ------------------------------------------------------------------------ weight decay
@pytest.fixture(scope="module")
def tiny_net():
    from elasticvit_tf.supernet import ElasticSupernet

    return ElasticSupernet("tiny", 10, num_slots=1)


def test_decay_and_no_decay_lists(tiny_net):
    decay, no_decay = optim.split_weight_decay(tiny_net)
    assert len(decay) + len(no_decay) == len(tiny_net.trainable_variables)
    decay_names = [v.path for v in decay]
    no_names = [v.path for v in no_decay]
    # Decayed: transformer linears, relative-position tables, V depthwise, head linears.
    for v, name in zip(decay, decay_names):
        assert len(v.shape) >= 2, name
        assert any(
            k in name
            for k in (
                "qkv",
                "proj",
                "fc1",
                "fc2",
                "attention_bias",
                "dw_v",
                "head/pre",
                "head/fc",
                "classifier",
            )
        ), name
    # 4 transformer stages x 2 layers x 6 tensors + 3 head kernels.
    assert len(decay) == 4 * 2 * 6 + 3
    # Not decayed: first conv, stem and conv-stage MBConvs, the transition MBConvs, every 1-D.
    assert any("first_conv" in n for n in no_names)
    assert any("transition" in n for n in no_names)
    assert not any("transition" in n or "first_conv" in n or "stem" in n for n in decay_names)
    assert all(len(v.shape) == 1 for v, n in zip(no_decay, no_names) if "stage2_layer1" in n)


def test_adamw_decays_only_the_decay_set(tiny_net):
    net = tiny_net
    opt = optim.make_optimizer(net, learning_rate=0.1, weight_decay=0.5)
    decay, no_decay = optim.split_weight_decay(net)
    before = {id(v): np.array(v.numpy()) for v in net.trainable_variables}
    # Zero gradients: Adam's update is 0, only the decoupled decay (v -= lr * wd * v) acts.
    opt.apply_gradients([(tf.zeros_like(v), v) for v in net.trainable_variables])
    for v in decay:
        np.testing.assert_allclose(v.numpy(), before[id(v)] * (1 - 0.1 * 0.5), rtol=1e-5)
    for v in no_decay:
        np.testing.assert_array_equal(v.numpy(), before[id(v)])
    for v, val in zip(net.trainable_variables, before.values()):
        v.assign(val)


def test_fused_adamw_matches_keras_adamw(tiny_net):
    variables = tiny_net.trainable_variables[:12]
    start = [np.array(v.numpy()) for v in variables]
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=v.shape).astype("float32") for v in variables] for _ in range(3)]
    results = []
    for cls in (keras.optimizers.AdamW, optim.FusedAdamW):
        for v, s in zip(variables, start):
            v.assign(s)
        opt = cls(learning_rate=0.01, weight_decay=0.1)
        opt.exclude_from_weight_decay(var_list=variables[::2])
        opt.build(variables)
        for g in grads:
            opt.apply_gradients(zip([tf.constant(a) for a in g], variables))
        results.append([np.array(v.numpy()) for v in variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, s) for a, s in zip(results[1], start))
    for v, s in zip(variables, start):
        v.assign(s)


def test_fused_adamw_skip_mask_freezes_weights_and_moments(tiny_net):
    v0, v1 = tiny_net.trainable_variables[:2]
    start = [np.array(v0.numpy()), np.array(v1.numpy())]
    opt = optim.FusedAdamW(learning_rate=0.1, weight_decay=0.5)
    opt.build([v0, v1])
    opt.skip_mask = {opt._var_key(v0): tf.constant(False), opt._var_key(v1): tf.constant(True)}
    opt.apply_gradients([(tf.ones_like(v0), v0), (tf.ones_like(v1), v1)])
    np.testing.assert_array_equal(v0.numpy(), start[0])
    assert not np.allclose(v1.numpy(), start[1])
    m0 = opt._momentums[opt._get_variable_index(v0)]
    np.testing.assert_array_equal(np.asarray(m0.numpy()), 0.0)
    v0.assign(start[0])
    v1.assign(start[1])


def test_fused_update_matches_agc_adamw_and_ema_kernels():
    """``FusedUpdate`` (one XLA function) against the same maths as TensorFlow kernels
    (``adaptive_clip_gradients`` + ``FusedAdamW.apply_gradients`` + ``ema_update``) on the same
    gradients: decayed and undecayed variables, AGC clipping some units, a skip mask that is
    False on step 2, the EMA; 3 steps."""
    shapes = [(4, 3), (3, 3, 2, 4), (3, 3, 4, 1), (3,)]
    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [
        [(rng.normal(size=s) * rng.choice([1e-3, 10.0])).astype("float32") for s in shapes]
        for _ in range(3)
    ]
    masks = [True, False, True]  # for variable 1, per step
    results = {}
    for fused in (False, True):
        variables = [tf.Variable(s) for s in start]
        opt = optim.FusedAdamW(learning_rate=0.01, weight_decay=0.1, epsilon=1e-8)
        opt.exclude_from_weight_decay(var_list=variables[1::2])
        opt.build(variables)
        shadows = [tf.Variable(s) for s in start]
        update = optim.FusedUpdate(opt, variables, 0.1, 1e-3, shadows, variables)
        for g, keep in zip(grads, masks):
            g = [tf.constant(a) for a in g]
            if fused:
                update(g, tf.constant(0.9), {1: tf.constant(keep)})
            else:
                clipped = optim.adaptive_clip_gradients(g, variables, 0.1, 1e-3)
                opt.skip_mask = {opt._var_key(variables[1]): tf.constant(keep)}
                opt.apply_gradients(zip(clipped, variables))
                opt.skip_mask = None
                optim.ema_update(shadows, variables, tf.constant(0.9))
        assert int(opt.iterations.numpy()) == 3
        results[fused] = [v.numpy() for v in variables + shadows] + [
            np.asarray(m.numpy()) for m in opt._momentums + opt._velocities
        ]
    for a, b in zip(results[False], results[True]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[True][0], start[0])

"""SupernetTrainer.train_step against a hand computation, on a stand-in supernet (fast)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf.train import losses, optim, recipe


class _SlotNet(keras.Model):
    """Stand-in supernet: logits = (x @ W + b) * arch[slot] with an int32 arch variable."""

    def __init__(self, num_slots=4, **kwargs):
        super().__init__(**kwargs)
        self.num_slots = num_slots
        self.num_classes = 3
        self.dense = keras.layers.Dense(3)
        self.dense.build((None, 4))
        self.arch = self.add_weight(
            shape=(num_slots,), dtype="int32", initializer="ones", trainable=False, name="arch"
        )
        self.built = True

    @property
    def arch_variables(self):
        return [self.arch]

    def weight_decay_variables(self):
        return [self.dense.kernel]

    def _check_slot(self, slot):
        # the supernet's forward contract: a Python int or a scalar integer tensor (graph slot)
        if not isinstance(slot, int) and not (tf.is_tensor(slot) and slot.shape.rank == 0):
            raise ValueError("python int or scalar tensor expected")
        return slot

    def set_archs(self, archs):
        self.arch.assign(np.asarray(archs, np.int32))

    def call(self, x, training=False, slot=0):
        slot = self._check_slot(slot)
        scale = tf.cast(self.arch.value[slot], tf.float32)
        return self.dense(tf.reshape(x, [-1, 4])) * scale


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


# Adam's first step is lr * g / (|g| + eps / sqrt(1 - beta_2)) (bias-corrected, eps = 1e-8).
EPS_HAT = 1e-8 / np.sqrt(1 - 0.999)


def _trainer(net, **kw):
    opt = optim.make_optimizer(net, learning_rate=0.01, weight_decay=0.1)
    args = dict(agc_clip=0.0, ema_decay=0.9, label_smoothing=0.1)
    args.update(kw)
    t = recipe.SupernetTrainer(net, **args)
    t.compile(optimizer=opt)
    return t


def _expected_grads(net, x, y, distill_last, smoothing=0.1):
    """Sum over slots of each slot's loss gradient, slot by slot as the spec describes."""
    total, probs, ces = None, [], []
    for slot in range(net.num_slots):
        with tf.GradientTape() as tape:
            z = net(x, slot=slot)
            if distill_last and slot == net.num_slots - 1:
                loss = losses.adaptive_alpha_divergence(z, tf.add_n(probs) / len(probs))
            else:
                loss = losses.label_smoothed_cross_entropy(y, z, smoothing)
        g = tape.gradient(loss, net.trainable_variables)
        if not (distill_last and slot == net.num_slots - 1):
            probs.append(tf.nn.softmax(z))
        ces.append(float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, z))))
        total = g if total is None else [a + b for a, b in zip(total, g)]
    return [t.numpy() for t in total], ces


@pytest.mark.parametrize("distill_last", [True, False])
def test_train_step_matches_hand_computation(distill_last):
    net = _SlotNet()
    net.set_archs([1, 2, 3, 1])
    trainer = _trainer(net)
    trainer.set_roles(("uniform",) * 3 + (("min",) if distill_last else ("uniform",)))
    x, y = _data()
    w0 = [v.numpy() for v in net.trainable_variables]
    grads, ces = _expected_grads(net, x, y, distill_last)
    logs = trainer.train_step((tf.constant(x), tf.constant(y)))
    for i in range(4):
        assert float(logs[f"ce_slot{i}"]) == pytest.approx(ces[i], rel=1e-5)
    # First AdamW step: w <- w - lr*wd*w (kernel only), then w <- w - lr * g / (|g| + eps_hat).
    lr, wd = 0.01, 0.1
    kernel, bias = w0
    gk, gb = grads
    want_k = kernel * (1 - lr * wd) - lr * gk / (np.abs(gk) + EPS_HAT)
    want_b = bias - lr * gb / (np.abs(gb) + EPS_HAT)
    np.testing.assert_allclose(net.dense.kernel.numpy(), want_k, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.dense.bias.numpy(), want_b, rtol=1e-4, atol=1e-6)
    # EMA (decay 0.9, no warm-up): 0.9 * old + 0.1 * new.
    ema_k = trainer.ema.shadow[0].numpy()
    np.testing.assert_allclose(ema_k, 0.9 * kernel + 0.1 * want_k, rtol=1e-5, atol=1e-7)


def test_agc_is_applied_to_the_summed_gradient():
    net = _SlotNet()
    trainer = _trainer(net, agc_clip=0.01)
    trainer.set_roles(("uniform",) * 4)
    x, y = _data(seed=1)
    w0 = [v.numpy() for v in net.trainable_variables]
    grads, _ = _expected_grads(net, x, y, distill_last=False)
    clipped = optim.adaptive_clip_gradients(
        [tf.constant(g) for g in grads], [tf.constant(w) for w in w0], 0.01
    )
    trainer.train_step((tf.constant(x), tf.constant(y)))
    gk = clipped[0].numpy()
    want_k = w0[0] * (1 - 0.01 * 0.1) - 0.01 * gk / (np.abs(gk) + EPS_HAT)
    np.testing.assert_allclose(net.dense.kernel.numpy(), want_k, rtol=1e-4, atol=1e-6)


def test_fit_traces_once_while_archs_change_and_reports_per_batch_ce():
    net = _SlotNet()
    trainer = _trainer(net, grad_cosine=True)
    trainer.set_roles(("max", "random", "random", "min"))
    x, y = _data(32, seed=2)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    seen = []

    class ChangeArchs(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            net.set_archs([batch % 3 + 1, 2, 1, 3])

        def on_train_batch_end(self, batch, logs=None):
            seen.append({k: float(v) for k, v in logs.items()})

    trainer.fit(ds, steps_per_epoch=6, epochs=1, verbose=0, callbacks=[ChangeArchs()])
    assert trainer.trace_count == 1
    assert len(seen) == 6
    # Per-batch values, not running means: slot 1 has the same scale on batches 0 and 3 but
    # different data, and its value is the batch's own CE.
    assert len({round(s["ce_slot1"], 6) for s in seen}) == 6
    for s in seen:
        assert -1.0 <= s["grad_cos"] <= 1.0 and -1.0 <= s["grad_cos_step"] <= 1.0
        assert s["loss"] == pytest.approx(sum(s[f"loss_slot{i}"] for i in range(4)), rel=1e-5)


def test_inplace_distillation_from_the_max_subnet():
    net = _SlotNet()
    net.set_archs([3, 1, 2, 1])
    trainer = _trainer(net)
    trainer.set_roles(("max", "random", "random", "min"), "from_max")
    x, y = _data(seed=5)
    p_max = tf.nn.softmax(net(x, slot=0))
    want = [float(losses.label_smoothed_cross_entropy(y, net(x, slot=0), 0.1))]
    want += [float(losses.soft_target_cross_entropy(p_max, net(x, slot=s))) for s in (1, 2, 3)]
    logs = trainer.train_step((tf.constant(x), tf.constant(y)))
    for s in range(4):
        assert float(logs[f"loss_slot{s}"]) == pytest.approx(want[s], rel=1e-5)
    with pytest.raises(ValueError, match="slot 0"):
        trainer.set_roles(("random", "max", "random", "min"), "from_max")
    with pytest.raises(ValueError, match="distillation"):
        trainer.set_roles(("uniform",) * 4, "sometimes")


def test_set_roles_checks_slot_count():
    trainer = _trainer(_SlotNet())
    with pytest.raises(ValueError, match="num_slots=4"):
        trainer.set_roles(("uniform",) * 3)
    trainer.set_roles(("uniform",) * 4)
    assert trainer.distill_last is False


def test_teacher_loss_and_loading_errors(tmp_path):
    # A teacher .keras file with the wrong number of classes is refused.
    inp = keras.Input((8, 8, 3))
    teacher = keras.Model(inp, keras.layers.Dense(5)(keras.layers.Flatten()(inp)))
    path = str(tmp_path / "t.keras")
    teacher.save(path)
    with pytest.raises(ValueError, match="outputs 5 classes; the data set has 3"):
        recipe.load_teachers(path, 3)
    assert len(recipe.load_teachers(path, 5)) == 1
    with pytest.raises(ValueError, match="not a .keras file"):
        recipe.load_teachers("NoSuchNet", 3)
    with pytest.raises(ValueError, match="cannot load"):
        recipe.load_teachers(str(tmp_path / "missing.keras"), 3)


def test_non_min_slots_learn_from_the_teacher_ensemble():
    net = _SlotNet()
    net.set_archs([1, 2, 3, 1])
    inp = keras.Input((4,))
    t1 = keras.Model(inp, keras.layers.Dense(3, kernel_initializer="ones")(inp))
    t2 = keras.Model(inp, keras.layers.Dense(3)(inp))
    trainer = _trainer(net, teachers=[t1, t2], teacher_temperature=0.2)
    trainer.set_roles(("uniform",) * 3 + ("min",))
    x, y = _data(seed=3)
    p_t = losses.teacher_probs([t1(x), t2(x)], 0.2)
    want = [float(losses.soft_target_cross_entropy(p_t, net(x, slot=s))) for s in range(3)]
    logs = trainer.train_step((tf.constant(x), tf.constant(y)))
    for s in range(3):
        assert float(logs[f"loss_slot{s}"]) == pytest.approx(want[s], rel=1e-5)
    assert t1.trainable is False and t2.trainable is False


@pytest.mark.slow
def test_skip_unused_updates_freezes_blocks_no_subnet_used():
    """Step 1 runs the max arch (moments become non-zero), step 2 the min arch: by default the
    blocks past the min depths still move (AdamW with zero gradient), with skip_unused_updates
    they and their optimizer state stay exactly as they were; used weights move either way."""
    from elasticvit_tf.supernet import ElasticSupernet

    net = ElasticSupernet("tiny", 3, num_slots=1)
    space = net.space
    start = [np.array(v.numpy()) for v in net.trainable_variables]
    deep = {id(v) for v in net.stages[0][1].trainable_variables}
    deep |= {id(v) for v in net.stem_blocks[1].trainable_variables}
    groups = recipe.usage_groups(net)
    grouped = {id(v) for g, _ in groups for v in g}
    assert deep <= grouped
    assert not {id(v) for v in net.head.trainable_variables} & grouped
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 32, 32, 3)).astype("float32"))
    y = tf.constant([0, 1])
    after = {}
    for skip in (False, True):
        for v, s in zip(net.trainable_variables, start):
            v.assign(s)
        opt = optim.make_optimizer(net, learning_rate=0.01, weight_decay=0.1)
        trainer = recipe.SupernetTrainer(net, agc_clip=0.1, skip_unused_updates=skip)
        trainer.compile(optimizer=opt)
        trainer.set_roles(("uniform",))
        step = tf.function(trainer.train_step)
        net.set_arch(space.max_arch())
        step((x, y))
        mid = [np.array(v.numpy()) for v in net.trainable_variables]
        net.set_arch(space.min_arch())
        step((x, y))
        unused = set()  # variables of the groups the min arch does not use
        for group, used in groups:
            if not bool(used([net._dims(0)])):
                unused |= {id(v) for v in group}
        assert deep <= unused  # the min arch runs no block past the min depths
        after[skip] = [
            (id(v), m, np.array(v.numpy())) for v, m in zip(net.trainable_variables, mid)
        ]
    moved_by_default = []
    for (i, m, default), (_, _, skipped) in zip(after[False], after[True]):
        if i in unused:
            np.testing.assert_array_equal(skipped, m)
        if i in deep:
            moved_by_default.append(not np.array_equal(default, m))
    assert any(moved_by_default)
    head = [a for a in after[True] if a[0] == id(net.head.classifier.kernel)][0]
    assert not np.array_equal(head[2], head[1])


@pytest.mark.slow
@pytest.mark.parametrize("skip", [False, True])
def test_fused_update_matches_the_keras_update_path(skip):
    """``optim.FusedUpdate`` (AGC + AdamW + EMA in one XLA function) against the Keras
    ``apply_gradients`` path: same weights, moments and EMA shadows after 3 steps over archs
    (max, min, random) on the tiny supernet, with and without ``skip_unused_updates``; one
    trace of the train step for all archs."""
    from elasticvit_tf.supernet import ElasticSupernet

    net = ElasticSupernet("tiny", 3, num_slots=1)
    space = net.space
    start = [np.array(v.numpy()) for v in net.weights if "float" in str(v.dtype)]
    floats = [v for v in net.weights if "float" in str(v.dtype)]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 32, 32, 3)).astype("float32"))
    y = tf.constant([0, 1])
    archs = [space.max_arch(), space.min_arch(), space.sample(np.random.default_rng(3))]
    out = {}
    for fused in (False, True):
        for v, s in zip(floats, start):
            v.assign(s)
        opt = optim.make_optimizer(net, learning_rate=0.01, weight_decay=0.1)
        trainer = recipe.SupernetTrainer(
            net, agc_clip=0.1, ema_decay=0.9, skip_unused_updates=skip, fused_update=fused
        )
        trainer.compile(optimizer=opt)
        trainer.set_roles(("uniform",))
        step = tf.function(trainer.train_step)
        for arch in archs:
            net.set_arch(arch)
            step((x, y))
        assert step.experimental_get_tracing_count() == 1
        assert int(opt.iterations.numpy()) == len(archs)
        out[fused] = (
            [v.numpy() for v in net.trainable_variables],
            [m.numpy() for m in opt._momentums] + [v.numpy() for v in opt._velocities],
            [s.numpy() for s in trainer.ema.shadow],
        )
    # The maths is checked tightly on fixed gradients (test_optim.py::
    # test_fused_update_matches_agc_adamw_and_ema_kernels); here the gradients come from two
    # runs of the supernet's backward pass, whose multi-threaded sums differ in the last bits,
    # and Adam's m / (sqrt(v) + eps) turns that into up to a few % of one lr step on weights
    # whose gradient is near zero (measured 1.7e-4 on 1 of 800). A wrong wiring (no decay, no
    # EMA, masks ignored, a step lost) moves most weights by ~lr.
    lr = 0.01
    for part in range(3):
        for a, b in zip(out[False][part], out[True][part]):
            np.testing.assert_allclose(b, a, rtol=0, atol=0.1 * lr)
        diff = np.concatenate(
            [np.abs(b - a).ravel() for a, b in zip(out[False][part], out[True][part])]
        )
        assert np.mean(diff > 2e-6) < 0.05

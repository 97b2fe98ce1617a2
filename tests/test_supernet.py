"""ElasticSupernet: arch variables and slots, one trace for every subnet, exact gradient
support, input validation, MirroredStrategy visibility of callback-assigned archs."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import randomize_supernet

from elasticvit_tf.extract import extract_subnet, recalibrate_bn
from elasticvit_tf.space import get_space
from elasticvit_tf.supernet import ElasticSupernet


@pytest.fixture(scope="module")
def tiny():
    return get_space("tiny")


@pytest.fixture(scope="module")
def net(tiny):
    return randomize_supernet(ElasticSupernet(tiny, 10, num_slots=4), seed=1)


def test_set_get_arch_and_slots(net, tiny):
    rng = np.random.default_rng(1)
    archs = [tiny.sample(rng) for _ in range(4)]
    net.set_archs(archs)
    assert [net.get_arch(i) for i in range(4)] == archs
    net.set_arch(tiny.min_arch(), slot=2)
    assert net.get_arch(2) == tiny.min_arch() and net.get_arch(1) == archs[1]
    assert net.arch_variables[0].shape == (4, 4 + 4 * len(tiny.stages))
    assert net.arch_variables[0].dtype == "int32" and not net.arch_variables[0].trainable


def test_bad_input_raises_value_error(net, tiny):
    bad = tiny.max_arch().replace(resolution=17)
    with pytest.raises(ValueError, match="resolution=17"):
        net.set_arch(bad)
    bad_width = tiny.max_arch().replace_stage(1, width=12)
    with pytest.raises(ValueError, match=r"stages\[1\]\.width=12"):
        net.set_arch(bad_width)
    with pytest.raises(ValueError, match="slot=4"):
        net.set_arch(tiny.min_arch(), slot=4)
    with pytest.raises(ValueError, match="slot=-1"):
        net.get_arch(-1)
    with pytest.raises(ValueError, match="slot=1.5"):
        net(np.zeros((1, 16, 16, 3), "float32"), slot=1.5)
    with pytest.raises(ValueError, match="resize_method='area'"):
        ElasticSupernet(tiny, 10, resize_method="area")
    with pytest.raises(ValueError, match="num_slots=0"):
        ElasticSupernet(tiny, 10, num_slots=0)
    with pytest.raises(ValueError, match="got 5 archs"):
        net.set_archs([tiny.min_arch()] * 5)


def test_variable_paths_are_stable(net):
    paths = {v.path for v in net.weights}
    for p in (
        "elastic_supernet/arch",
        "elastic_supernet/first_conv/conv/kernel",
        "elastic_supernet/stem_block1/dw/kernel",
        "elastic_supernet/stage0_block0/pw/kernel",
        "elastic_supernet/stage1_block0/se1/bias",
        "elastic_supernet/stage2_layer0/transition/pwl_bn/moving_variance",
        "elastic_supernet/stage2_layer1/qkv/kernel",
        "elastic_supernet/stage5_layer0/attention_bias",
        "elastic_supernet/head/classifier/kernel",
    ):
        assert p in paths, p
    # one variable per super-weight: the official qkv layout [C, 2 C + vmax C]
    qkv = next(v for v in net.weights if v.path == "elastic_supernet/stage3_layer0/qkv/kernel")
    assert tuple(qkv.shape) == (32, (2 + 2) * 32)


def test_weight_decay_variables(net):
    wd = {v.path.split("/", 1)[1] for v in net.weight_decay_variables()}
    assert "stage2_layer0/qkv/kernel" in wd and "stage5_layer1/attention_bias" in wd
    assert "stage4_layer0/dw_v/kernel" in wd and "head/classifier/kernel" in wd
    assert "head/pre/kernel" in wd and "head/fc/kernel" in wd
    assert not any("transition" in p or "bias" == p.rsplit("/", 1)[1] for p in wd)
    assert not any(p.startswith(("first_conv", "stem", "stage0", "stage1")) for p in wd)
    assert all(v.trainable for v in net.weight_decay_variables())
    # 6 per transformer layer + 3 head kernels
    n_layers = sum(st.max_depth for st in net.space.stages if st.is_transformer)
    assert len(wd) == 6 * n_layers + 3


def test_one_trace_for_many_archs_inference(net, tiny):
    fn = tf.function(lambda x: net(x, training=False, slot=0))
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 24, 24, 3)).astype("float32"))
    rng = np.random.default_rng(3)
    outs = []
    for _ in range(50):
        net.set_arch(tiny.sample(rng))
        outs.append(fn(x).numpy())
    assert fn.experimental_get_tracing_count() == 1
    assert len({o.tobytes() for o in outs}) > 40  # different subnets really ran


@pytest.mark.slow
def test_one_trace_for_many_archs_training_step(tiny):
    net = ElasticSupernet(tiny, 10, num_slots=2)
    opt = keras.optimizers.AdamW(1e-3)
    variables = net.trainable_variables
    opt.build(variables)  # else the first call creates optimizer state and traces twice

    @tf.function(jit_compile=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = 0.0
            for slot in range(1):
                logits = net(x, training=True, slot=slot)
                loss += tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                )
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        opt.apply_gradients(zip(grads, variables))
        return loss

    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(4, 24, 24, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=4))
    losses = []
    for _ in range(50):
        net.set_archs([tiny.sample(rng), tiny.sample(rng)])  # slot 1 is never run
        losses.append(float(step(x, y)))
    assert step.experimental_get_tracing_count() == 1
    assert np.all(np.isfinite(losses))


def test_slots_are_independent(net, tiny):
    rng = np.random.default_rng(5)
    archs = [tiny.sample(rng) for _ in range(2)]
    net.set_archs(archs)
    x = tf.constant(rng.normal(size=(2, 20, 20, 3)).astype("float32"))
    both = tf.function(lambda x: [net(x, training=False, slot=i) for i in range(2)])(x)
    for i, a in enumerate(archs):
        net.set_arch(a, slot=0)
        single = net(x, training=False, slot=0).numpy()
        np.testing.assert_allclose(both[i].numpy(), single, atol=1e-5)


def test_tensor_slot_matches_int_slot(net, tiny):
    """A scalar integer tensor selects the slot inside the graph (one trace for all slots)."""
    rng = np.random.default_rng(6)
    net.set_archs([tiny.sample(rng) for _ in range(3)])
    x = tf.constant(rng.normal(size=(2, 20, 20, 3)).astype("float32"))
    fn = tf.function(lambda x, s: net(x, training=False, slot=s))
    for i in range(3):
        want = net(x, training=False, slot=i).numpy()
        np.testing.assert_allclose(fn(x, tf.constant(i)).numpy(), want, atol=1e-5)
    assert fn.experimental_get_tracing_count() == 1
    with pytest.raises(ValueError, match="scalar integer"):
        net(x, slot=tf.constant([0, 1]))
    with pytest.raises(ValueError, match="scalar integer"):
        net(x, slot=tf.constant(0.0))
    with pytest.raises(ValueError, match="expected a Python int"):
        net.set_arch(tiny.min_arch(), slot=tf.constant(0))


def _used_element_masks(net, arch):
    """Masks of the super-weight elements the subnet uses, from the extracted weights: every
    trainable element gets a unique integer id, the extracted model shows which ids it uses."""
    variables = net.trainable_variables
    saved = [v.numpy() for v in variables]
    ids, start = [], 1
    for v in variables:
        n = int(np.prod(v.shape))
        ids.append(np.arange(start, start + n, dtype=np.float32).reshape(v.shape))
        v.assign(ids[-1])
        start += n
    assert start < 2**24  # ids exact in float32
    model = extract_subnet(net, arch)
    used = np.concatenate([np.ravel(w) for w in model.get_weights()])
    for v, s in zip(variables, saved):
        v.assign(s)
    return [np.isin(i, used) for i in ids], model


def test_gradients_reach_exactly_the_active_slices(tiny):
    net = randomize_supernet(ElasticSupernet(tiny, 10, num_slots=1), seed=6)
    rng = np.random.default_rng(7)
    for _ in range(3):
        arch = tiny.sample(rng)
        net.set_arch(arch)
        masks, model = _used_element_masks(net, arch)
        n_used = sum(int(m.sum()) for m in masks)
        assert n_used == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        r = arch.resolution
        x = tf.constant(rng.normal(size=(3, r, r, 3)).astype("float32"))
        w = tf.constant(rng.normal(size=(3, 10)).astype("float32"))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(x, training=True) * w)
        grads = tape.gradient(loss, net.trainable_variables)
        nonzero_inside = 0
        for v, g, m in zip(net.trainable_variables, grads, masks):
            g = np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
            assert np.all(g[~m] == 0.0), f"{v.path}: gradient outside the active slice"
            nonzero_inside += int(np.count_nonzero(g[m]))
        # most active elements get a non-zero gradient (some are legitimately zero: ReLU/
        # Hardswish dead zones)
        assert nonzero_inside > 0.7 * n_used


def test_recalibrate_bn_supernet_first_conv_hand_check(tiny):
    net = ElasticSupernet(tiny, 10, num_slots=2)
    arch = tiny.min_arch()  # stem width 4 of 8
    net.set_arch(arch, slot=1)
    bn = net.first_conv.bn
    bn.moving_mean.assign(np.full(8, 3.0, "float32"))
    rng = np.random.default_rng(8)
    batches = [rng.normal(size=(2, 16, 16, 3)).astype("float32") for _ in range(3)]
    recalibrate_bn(net, batches, num_batches=2, slot=1)
    k = net.first_conv.conv.kernel.numpy()[:, :, :, :4]
    means, vars_ = [], []
    for b in batches[:2]:
        y = tf.nn.conv2d(np.pad(b, [(0, 0), (1, 1), (1, 1), (0, 0)]), k, 2, "VALID").numpy()
        y = y.reshape(-1, 4).astype(np.float64)
        means.append(y.mean(0))
        vars_.append(y.var(0, ddof=1))
    np.testing.assert_allclose(bn.moving_mean.numpy()[:4], np.mean(means, 0), atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy()[:4], np.mean(vars_, 0), rtol=1e-4)
    np.testing.assert_array_equal(bn.moving_mean.numpy()[4:], 3.0)
    np.testing.assert_array_equal(bn.moving_variance.numpy()[4:], 1.0)
    assert all(layer.calibration_factor is None for layer in net.batch_norm_layers())


def test_get_config_roundtrip(tiny):
    net = ElasticSupernet(tiny, 7, num_slots=3, resize_method="torch_bicubic")
    clone = ElasticSupernet.from_config(net.get_config())
    assert clone.space == tiny and clone.num_classes == 7 and clone.num_slots == 3
    assert clone.resize_method == "torch_bicubic"
    assert len(clone.weights) == len(net.weights)


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from elasticvit_tf.space import get_space
    from elasticvit_tf.blocks import arch_row
    from elasticvit_tf.supernet import ElasticSupernet
    sp = get_space("tiny")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        net = ElasticSupernet(sp, 10, num_slots=2)
        net.compile(optimizer="adam",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    archs = [sp.sample(rng) for _ in range(6)]

    @tf.function
    def read():
        return strategy.run(lambda: tf.identity(net.arch.value))

    seen = []
    class SetArch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            net.set_arch(archs[batch], slot=0)
        def on_train_batch_end(self, batch, logs=None):
            vals = strategy.experimental_local_results(read())
            want = arch_row(archs[batch])
            seen.append(all(np.array_equal(np.asarray(v)[0], want) for v in vals)
                        and len(vals) == 2)
    x = rng.normal(size=(24, 24, 24, 3)).astype("float32")
    y = rng.integers(0, 10, size=24)
    net.fit(x, y, batch_size=4, epochs=1, callbacks=[SetArch()], verbose=0)
    assert len(seen) == 6 and all(seen), seen
    print("REPLICAS", strategy.num_replicas_in_sync, "OK")
    """
)


@pytest.mark.slow
def test_mirrored_strategy_sees_callback_arch(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "REPLICAS 2 OK" in res.stdout

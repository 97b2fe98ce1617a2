"""Tests for elasticvit_tf.model_dir: config round trip, space checks, checkpoints, atomicity."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf import model_dir as md
from elasticvit_tf.space import get_space


class _FakeNet(keras.Model):
    """Stands in for the supernet: float weights, BN statistics and an int32 arch variable."""

    def __init__(self, space, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.dense = keras.layers.Dense(3)
        self.bn = keras.layers.BatchNormalization()
        self.arch = self.add_weight(
            shape=(2,), dtype="int32", initializer="zeros", trainable=False, name="arch"
        )

    @property
    def arch_variables(self):
        return [self.arch]

    def call(self, x, training=False):
        return self.bn(self.dense(keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))[:, :4]))


def _fake_net(space):
    net = _FakeNet(space)
    net(tf.zeros([1, 2, 2, 1]))
    return net


@pytest.fixture
def tiny():
    return get_space("tiny")


def _config(space):
    return {**md.space_config(space), "num_classes": 3, "data": {"dataset": "digits"}}


def test_config_roundtrip_and_atomic_write(tmp_path, tiny):
    cfg = _config(tiny)
    md.write_config(str(tmp_path), cfg)
    assert md.read_config(str(tmp_path)) == json.loads(json.dumps(cfg))
    # No temp files left next to config.json.
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_read_config_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="config.json does not exist"):
        md.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is unreadable"):
        md.read_config(str(tmp_path))


def test_write_config_requires_space(tmp_path):
    with pytest.raises(ValueError, match="lacks 'space'"):
        md.write_config(str(tmp_path), {"num_classes": 3})
    assert not os.path.exists(md.config_path(str(tmp_path)))


def test_check_space_message(tiny):
    demo = get_space("demo")
    cfg = _config(tiny)
    md.check_space(cfg, tiny)
    with pytest.raises(ValueError) as e:
        md.check_space(cfg, demo, "/x/run")
    msg = str(e.value)
    assert "model_dir /x/run holds space 'tiny'" in msg
    assert tiny.fingerprint() in msg and demo.fingerprint() in msg and "'demo'" in msg


def test_space_from_config_uses_preset_or_stored_definition(tiny):
    cfg = _config(tiny)
    assert md.space_from_config(cfg) is tiny
    with pytest.raises(ValueError, match="holds space 'tiny'"):
        md.space_from_config(cfg, "demo")
    # A preset that changed since the run: the stored definition (and its hash) is used.
    changed = md.SearchSpace.from_dict(dict(cfg["space_def"], head_width=64))
    stored = md.space_from_config(md.space_config(changed))
    assert stored.head_width == 64 and stored.name == "tiny"


def test_ema_source_variables_exclude_arch(tiny):
    net = _fake_net(tiny)
    names = [v.path for v in md.ema_source_variables(net)]
    assert not any(n.endswith("arch") for n in names)
    # kernel, bias, gamma, beta, moving mean, moving variance
    assert len(names) == 6


def test_save_and_load_supernet_prefers_ema(tmp_path, tiny, monkeypatch):
    net = _fake_net(tiny)
    live = [v.numpy() for v in md.ema_source_variables(net)]
    ema_vals = [np.full(v.shape, 0.5, np.float32) for v in live]
    path = md.save_supernet(str(tmp_path), net, {"num_classes": 3}, ema_weights=ema_vals)
    assert path == md.latest_checkpoint(str(tmp_path))
    assert md.checkpoint_has(path, "ema") and not md.checkpoint_has(path, "optimizer")
    cfg = md.read_config(str(tmp_path))
    assert cfg["space"] == "tiny" and cfg["space_fingerprint"] == tiny.fingerprint()

    monkeypatch.setattr(md, "build_supernet", lambda space, config: _fake_net(space))
    loaded, cfg2 = md.load_supernet(str(tmp_path), "tiny", use_ema=True)
    for v in md.ema_source_variables(loaded):
        np.testing.assert_array_equal(v.numpy(), 0.5)
    loaded, _ = md.load_supernet(str(tmp_path), use_ema=False)
    for v, want in zip(md.ema_source_variables(loaded), live):
        np.testing.assert_array_equal(v.numpy(), want)
    with pytest.raises(ValueError, match="holds space 'tiny'"):
        md.load_supernet(str(tmp_path), "demo")


def test_save_supernet_refuses_other_space(tmp_path, tiny):
    demo = get_space("demo")
    md.write_config(str(tmp_path), _config(demo))
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="holds space 'demo'"):
        md.save_supernet(str(tmp_path), _fake_net(tiny), {"num_classes": 3})
    assert (tmp_path / "config.json").read_text() == before
    assert md.latest_checkpoint(str(tmp_path)) is None


def test_load_supernet_without_checkpoint(tmp_path, tiny):
    md.write_config(str(tmp_path), _config(tiny))
    with pytest.raises(ValueError, match="holds no checkpoint"):
        md.load_supernet(str(tmp_path))


def test_training_checkpoint_restores_live_and_ema_separately(tmp_path, tiny):
    net = _fake_net(tiny)
    ema = md.EmaWeights(md.ema_source_variables(net))
    ema.set_numpy([np.full(s.shape, 2.0, np.float32) for s in ema.shadow])
    opt = keras.optimizers.AdamW(1e-3)
    opt.build(net.trainable_variables)
    step = tf.Variable(7, dtype=tf.int64)
    sampler = tf.Variable(json.dumps({"level": 3}))
    data = tf.Variable(json.dumps({"epoch": 1, "batch": 5}))
    ckpt = md.make_checkpoint(net, ema, opt, step, sampler, data)
    manager = md.checkpoint_manager(md.checkpoint_dir(str(tmp_path)), ckpt)
    manager.save(checkpoint_number=7)

    net2 = _fake_net(tiny)
    ema2 = md.EmaWeights(md.ema_source_variables(net2))
    opt2 = keras.optimizers.AdamW(1e-3)
    opt2.build(net2.trainable_variables)
    step2, sampler2, data2 = tf.Variable(0, dtype=tf.int64), tf.Variable(""), tf.Variable("")
    ckpt2 = md.make_checkpoint(net2, ema2, opt2, step2, sampler2, data2)
    ckpt2.restore(md.latest_checkpoint(str(tmp_path))).assert_existing_objects_matched()
    assert int(step2.numpy()) == 7
    assert json.loads(sampler2.numpy().decode()) == {"level": 3}
    assert json.loads(data2.numpy().decode()) == {"epoch": 1, "batch": 5}
    for a, b in zip(md.ema_source_variables(net2), md.ema_source_variables(net)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # live weights stay live
    for s in ema2.shadow:
        np.testing.assert_array_equal(s.numpy(), 2.0)


_WRITER = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    from elasticvit_tf import model_dir as md

    out = sys.argv[1]
    big = [tf.Variable(tf.zeros([256, 1024])) for _ in range(8)]
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(big=big, step=step)
    manager = md.checkpoint_manager(out, ckpt, max_to_keep=2)
    i = 0
    while True:
        i += 1
        step.assign(i)
        for v in big:
            v.assign(tf.fill(v.shape, float(i)))
        manager.save(checkpoint_number=i)
        print(i, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_leaves_a_usable_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    out = str(tmp_path / "ckpts")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    rng = np.random.default_rng(0)
    for trial in range(2):
        proc = subprocess.Popen(
            [sys.executable, str(script), out], stdout=subprocess.PIPE, env=env, text=True
        )
        # Wait for a few completed saves, then kill at a random moment (mostly mid-write: the
        # writer does nothing but write checkpoints).
        for _ in range(3 + trial):
            line = proc.stdout.readline()
            assert line, "writer died"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = tf.train.latest_checkpoint(out)
        assert latest is not None
        big = [tf.Variable(tf.zeros([256, 1024])) for _ in range(8)]
        step = tf.Variable(-1, dtype=tf.int64)
        tf.train.Checkpoint(big=big, step=step).restore(latest).assert_consumed()
        n = int(step.numpy())
        assert n >= 3 and latest.endswith(f"ckpt-{n}")
        for v in big:  # every tensor comes from the same save
            np.testing.assert_array_equal(v.numpy(), float(n))


def test_read_sampler_state(tmp_path):
    mdir = str(tmp_path / "m")
    assert md.read_sampler_state(mdir) is None  # no checkpoint
    state = tf.Variable(json.dumps({"sampler": "uniform", "step": 3}), dtype=tf.string)
    manager = md.checkpoint_manager(md.checkpoint_dir(mdir), tf.train.Checkpoint(sampler=state))
    manager.save()
    assert md.read_sampler_state(mdir) == {"sampler": "uniform", "step": 3}
    state.assign("[1, 2]")
    manager.save()
    with pytest.raises(ValueError, match="expected an object"):
        md.read_sampler_state(mdir)
    step_only = str(tmp_path / "s")
    md.checkpoint_manager(
        md.checkpoint_dir(step_only), tf.train.Checkpoint(step=tf.Variable(1))
    ).save()
    assert md.read_sampler_state(step_only) is None


# ------------------------------------------------------------------------------- reliability
def _two_checkpoints(tmp_path):
    v = tf.Variable(0.0)
    ckpt = tf.train.Checkpoint(v=v)
    manager = md.checkpoint_manager(md.checkpoint_dir(str(tmp_path)), ckpt)
    for step in (1, 2):
        v.assign(float(step))
        manager.save(checkpoint_number=step)
    return v, ckpt


@pytest.mark.parametrize("damage", ["truncate_data", "random_index"])
def test_restore_falls_back_to_the_previous_intact_checkpoint(tmp_path, damage):
    v, ckpt = _two_checkpoints(tmp_path)
    latest = md.latest_checkpoint(str(tmp_path))
    if damage == "truncate_data":
        with open(latest + ".data-00000-of-00001", "r+b") as f:
            f.truncate(3)
    else:
        with open(latest + ".index", "wb") as f:
            f.write(np.random.default_rng(0).bytes(512))
    with pytest.raises(ValueError, match=r"checkpoint .*ckpt-2 .* is damaged"):
        md.restore_checkpoint(ckpt, latest)
    v.assign(-1.0)
    logs = []
    path = md.restore_latest_intact(
        str(tmp_path), lambda p: md.restore_checkpoint(ckpt, p), log=logs.append
    )
    assert path.endswith("ckpt-1") and float(v.numpy()) == 1.0
    assert "ckpt-2" in logs[0] and "falling back" in logs[1] and "ckpt-1" in logs[1]
    assert md.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")  # the state file follows
    manager = md.checkpoint_manager(md.checkpoint_dir(str(tmp_path)), ckpt, max_to_keep=1)
    manager.save(checkpoint_number=3)  # the intact one still rotates out
    assert [os.path.basename(p) for p in md.checkpoint_paths(str(tmp_path))] == ["ckpt-3"]


def test_restore_refuses_when_no_checkpoint_is_intact(tmp_path):
    _, ckpt = _two_checkpoints(tmp_path)
    for p in md.checkpoint_paths(str(tmp_path)):
        with open(p + ".index", "wb") as f:
            f.write(b"garbage")
    with pytest.raises(ValueError, match="no intact checkpoint"):
        md.restore_latest_intact(str(tmp_path), lambda p: md.restore_checkpoint(ckpt, p), print)


def test_training_lock_refuses_a_second_holder(tmp_path):
    with md.TrainingLock(str(tmp_path)):
        with pytest.raises(ValueError, match=rf"being trained by pid {os.getpid()}"):
            md.TrainingLock(str(tmp_path)).acquire()
    with md.TrainingLock(str(tmp_path)):  # released: free again
        pass


@pytest.mark.slow
def test_training_lock_is_released_when_the_holder_is_killed(tmp_path):
    code = textwrap.dedent(
        f"""
        import time
        from elasticvit_tf import model_dir as md
        lock = md.TrainingLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {proc.pid}"):
            md.TrainingLock(str(tmp_path)).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    md.TrainingLock(str(tmp_path)).acquire().release()


def test_orphan_temp_dirs_and_arch_log_trim(tmp_path):
    temp = os.path.join(md.checkpoint_dir(str(tmp_path)), "ckpt-7_temp")
    os.makedirs(os.path.join(temp, "part-00000-of-00001"))
    assert md.remove_orphan_temp_dirs(str(tmp_path)) == [temp] and not os.path.exists(temp)
    with open(md.arch_log_path(str(tmp_path)), "w") as f:
        for step in (0, 1, 2, 3, 2, 3):
            f.write(json.dumps({"step": step, "archs": []}) + "\n")
        f.write('{"step": 4, "ar')  # torn by a kill
    md.trim_arch_log(str(tmp_path), 2)
    with open(md.arch_log_path(str(tmp_path))) as f:
        assert [json.loads(line)["step"] for line in f] == [0, 1]


def test_load_supernet_names_a_damaged_checkpoint(tmp_path, tiny):
    from elasticvit_tf.supernet import ElasticSupernet

    net = ElasticSupernet(tiny, 10, num_slots=1)
    md.ensure_built(net, tiny)
    path = md.save_supernet(str(tmp_path), net, {"num_classes": 10, "num_slots": 1}, step=1)
    with open(path + ".data-00000-of-00001", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=r"ckpt-1 \(files .*ckpt-1.index.* is damaged"):
        md.load_supernet(str(tmp_path))

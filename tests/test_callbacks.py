"""Tests for elasticvit_tf.train.callbacks with a stand-in net (no supernet tracing)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf import model_dir as md
from elasticvit_tf.sampling.registry import make_sampler
from elasticvit_tf.space import get_space
from elasticvit_tf.train import callbacks as cb


class _Net:
    """Records set_archs calls."""

    def __init__(self):
        self.calls = []

    def set_archs(self, archs):
        self.calls.append(tuple(a.key() for a in archs))


class _Trainer:
    def __init__(self):
        self.roles = None

    def set_roles(self, roles):
        self.roles = tuple(roles)


class _RecordingSampler:
    """Wraps a real sampler and records update_scores / end_epoch."""

    def __init__(self, inner):
        self.inner = inner
        self.scores = []
        self.epochs = 0

    @property
    def roles(self):
        return self.inner.roles

    def sample_step(self):
        return self.inner.sample_step()

    def update_scores(self, pairs):
        self.scores.append([(a.key(), s) for a, s in pairs])

    def end_epoch(self):
        self.epochs += 1

    def get_state(self):
        return self.inner.get_state()


@pytest.fixture
def tiny():
    return get_space("tiny")


def test_sampler_callback_sets_archs_and_feeds_scores(tmp_path, tiny):
    reference = make_sampler("sandwich", tiny, seed=3)
    sampler = _RecordingSampler(make_sampler("sandwich", tiny, seed=3))
    net, trainer = _Net(), _Trainer()
    state = cb.RunState(0, steps_per_epoch=2)
    log = tmp_path / "archs.jsonl"
    c = cb.SamplerCallback(sampler, net, trainer, arch_log=str(log), state=state)
    assert trainer.roles == ("max", "random", "random", "min")
    for step in range(3):
        c.on_train_batch_begin(step)
        want = reference.sample_step()
        assert net.calls[-1] == tuple(a.key() for a in want.archs)
        logs = {f"ce_slot{i}": 1.0 + i for i in range(4)}
        c.on_train_batch_end(step, logs)
        # The min slot (distilled) is not scored; score = -CE.
        assert sampler.scores[-1] == [(want.archs[i].key(), -(1.0 + i)) for i in range(3)]
        state.step += 1
        c.on_epoch_end(0)
    # Only the real epoch boundary (step 2) ends an epoch.
    assert sampler.epochs == 1
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2] and len(lines[0]["archs"]) == 4


def test_sampler_callback_refuses_changing_roles(tiny):
    class Flip(_RecordingSampler):
        n = 0

        def sample_step(self):
            s = self.inner.sample_step()
            Flip.n += 1
            if Flip.n >= 2:
                import dataclasses

                return dataclasses.replace(s, roles=("uniform",) * 4)
            return s

    c = cb.SamplerCallback(Flip(make_sampler("sandwich", tiny, seed=0)), _Net(), _Trainer())
    c.on_train_batch_begin(0)
    with pytest.raises(ValueError, match="roles changed"):
        c.on_train_batch_begin(1)


def test_checkpoint_callback_saves_state_every_n(tmp_path, tiny):
    sampler = make_sampler("uniform", tiny, seed=1)
    sampler.sample_step()
    v = tf.Variable(1.0)
    step_var = tf.Variable(0, dtype=tf.int64)
    s_var, d_var = tf.Variable(""), tf.Variable("")
    ckpt = tf.train.Checkpoint(v=v, step=step_var, sampler=s_var, data=d_var)
    manager = md.checkpoint_manager(str(tmp_path), ckpt, max_to_keep=5)
    state = cb.RunState(0, steps_per_epoch=10)
    c = cb.CheckpointCallback(manager, step_var, s_var, d_var, sampler, state, every=2)
    for _ in range(5):
        state.step += 1
        c.on_train_batch_end(0)
    assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [2, 4]
    assert c.save().endswith("ckpt-5") and c.save() is None  # no duplicate save at one step
    restored = tf.Variable("")
    tf.train.Checkpoint(sampler=restored).restore(manager.latest_checkpoint).expect_partial()
    assert json.loads(restored.numpy().decode()) == sampler.get_state()
    assert json.loads(d_var.numpy().decode()) == {"batches_consumed": 5}


def test_eval_callback_writes_eval_json(tmp_path, tiny):
    calls = []

    def evaluator(archs):
        calls.append(sorted(archs))
        return {name: 0.5 for name in archs}

    state = cb.RunState(0, steps_per_epoch=4)
    path = str(tmp_path / "eval.json")
    c = cb.EvalCallback(
        evaluator,
        {"min": tiny.min_arch(), "max": tiny.max_arch()},
        state,
        every=3,
        logdir=str(tmp_path / "tb"),
        eval_json=path,
    )
    for _ in range(6):
        state.step += 1
        c.on_train_batch_end(0)
    data = json.loads(open(path).read())
    assert [r["step"] for r in data["records"]] == [3, 6]
    assert data["latest"]["min_top1"] == 0.5 and data["latest"]["epoch"] == 1.5
    assert calls == [["max", "min"], ["max", "min"]]


def test_subnet_evaluator_restores_live_weights(tiny):
    from elasticvit_tf.supernet import ElasticSupernet

    net = ElasticSupernet(tiny, 3, num_slots=2)
    ema = md.EmaWeights(md.ema_source_variables(net))
    for s in ema.shadow:
        s.assign(tf.zeros_like(s))
    before = [np.array(v.numpy()) for v in md.ema_source_variables(net)]
    x = tf.random.stateless_normal([8, 16, 16, 3], seed=[1, 2])
    y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    ev = cb.SubnetEvaluator(net, ema, lambda: [(x, y)], lambda: [(x, y)], calib_batches=0)
    res = ev({"min": tiny.min_arch()})
    # All-zero EMA weights give all-equal logits: argmax 0 -> 3 of 8 right.
    assert res["min"] == pytest.approx(3 / 8)
    for v, b in zip(md.ema_source_variables(net), before):
        np.testing.assert_array_equal(v.numpy(), b)

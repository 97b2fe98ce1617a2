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

    def set_roles(self, roles, distillation=None):
        self.roles = tuple(roles)
        self.distillation = distillation


class _RecordingSampler:
    """Wraps a real sampler and records update_scores / end_epoch."""

    def __init__(self, inner):
        self.inner = inner
        self.scores = []
        self.epochs = 0

    @property
    def roles(self):
        return self.inner.roles

    @property
    def distillation(self):
        return self.inner.distillation

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
    assert json.loads(d_var.numpy().decode()) == {
        "batches_consumed": 5,
        "rescore_batches_consumed": 0,
    }


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


def test_ema_evaluator_restores_live_weights(tiny):
    from elasticvit_tf.supernet import ElasticSupernet

    net = ElasticSupernet(tiny, 3, num_slots=2)
    ema = md.EmaWeights(md.ema_source_variables(net))
    for s in ema.shadow:
        s.assign(tf.zeros_like(s))
    before = [np.array(v.numpy()) for v in md.ema_source_variables(net)]
    x = tf.random.stateless_normal([8, 16, 16, 3], seed=[1, 2])
    y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    ev = cb.EmaEvaluator(net, ema, lambda: [(x, y)], lambda: [(x, y)], calib_batches=0)
    res = ev({"min": tiny.min_arch()})
    # All-zero EMA weights give all-equal logits: argmax 0 -> 3 of 8 right.
    assert res["min"] == pytest.approx(3 / 8)
    for v, b in zip(md.ema_source_variables(net), before):
        np.testing.assert_array_equal(v.numpy(), b)


# ------------------------------------------------------------------------- bank refresh
def _fake_ce(arch):
    import zlib

    return (zlib.crc32(arch.key().encode()) % 1000) / 100.0


class _Scorer:
    """Records the refresh calls; scores = -(fake CE + offset)."""

    def __init__(self, state, offset=0.0):
        self.state, self.offset, self.calls = state, offset, []

    def __call__(self, archs):
        self.calls.append((self.state.step, [a.key() for a in archs]))
        return [-(_fake_ce(a) + self.offset) for a in archs]


def _drive_refresh(c, state, steps):
    for _ in range(steps):
        c.on_train_batch_begin(state.step % state.steps_per_epoch)
        logs = {f"ce_slot{i}": _fake_ce(a) for i, a in enumerate(c.current.archs)}
        c.on_train_batch_end(0, logs)
        state.step += 1
        if state.step % state.steps_per_epoch == 0:
            c.on_epoch_end(0)


def test_bank_refresh_runs_at_the_scheduled_steps_only(tiny):
    sampler = make_sampler("elasticvit", tiny, seed=0, tables="none")
    state = cb.RunState(0, steps_per_epoch=8)
    scorer = _Scorer(state)
    c = cb.SamplerCallback(sampler, _Net(), _Trainer(), state=state, scorer=scorer)
    _drive_refresh(c, state, 32)
    steps = [s for s, _ in scorer.calls]
    # epoch start (batch 0) and the quarter-epoch points (batches 1, 3, 5 of 8)
    assert all(s % 8 in (0, 1, 3, 5) for s in steps)
    assert {8, 16, 24} <= set(steps) and any(s % 8 in (1, 3, 5) for s in steps)
    epoch_start = dict(scorer.calls)[16]
    assert len(epoch_start) > max(len(keys) for s, keys in scorer.calls if s % 8)
    assert c.refreshed == sum(len(k) for _, k in scorer.calls)
    # no refresh for samplers without banks, nor with rescore="none"
    for name, cfg in (("uniform", {}), ("elasticvit", {"rescore": "none", "tables": "none"})):
        quiet = _Scorer(state)
        state.step = 0
        c2 = cb.SamplerCallback(
            make_sampler(name, tiny, 0, **cfg), _Net(), state=state, scorer=quiet
        )
        _drive_refresh(c2, state, 17)
        assert quiet.calls == []


def test_bank_refresh_changes_scores_and_replaces_the_worst_entry(tiny):
    sampler = make_sampler("elasticvit", tiny, seed=1, tables="none")
    state = cb.RunState(0, steps_per_epoch=8)
    c = cb.SamplerCallback(sampler, _Net(), state=state, scorer=_Scorer(state, offset=0.0))
    _drive_refresh(c, state, 16)  # two epochs: the banks fill
    before = {a.key(): s for bank in sampler.banks for a, s in bank}
    c.scorer = _Scorer(state, offset=5.0)  # the network got worse on every bank arch
    c.on_train_batch_begin(0)  # step 16: batch 0 of an epoch, every bank is refreshed
    after = {a.key(): s for bank in sampler.banks for a, s in bank}
    assert before.keys() == after.keys() and before
    assert all(after[k] == pytest.approx(before[k] - 5.0) for k in after)
    # the refreshed worst entry of a full bank gives way to a better new arch
    i = next(j for j, b in enumerate(sampler.banks) if len(b) == sampler.capacity(j))
    worst = min(sampler.banks[i], key=lambda e: e[1])
    sampler._last_level_index, sampler._last_min_key = i, None
    new = next(
        a
        for a in (sampler.sample_in_bin(i) for _ in range(500))
        if a.key() not in after and sampler.in_bin(a, i)
    )
    sampler.update_scores([(new, worst[1] + 1e-3)])
    keys = [a.key() for a, _ in sampler.banks[i]]
    assert new.key() in keys and worst[0].key() not in keys


def test_bank_refresh_resume_keeps_the_refreshed_scores(tiny):
    def run(steps, sampler=None, step0=0):
        sampler = sampler or make_sampler("elasticvit", tiny, seed=2, tables="none")
        state = cb.RunState(step0, steps_per_epoch=8)
        scorer = _Scorer(state, offset=3.0)  # refresh scores differ from the step's scores
        c = cb.SamplerCallback(sampler, _Net(), state=state, scorer=scorer)
        _drive_refresh(c, state, steps)
        return sampler, scorer.calls

    full, calls = run(30)
    half, first = run(17)
    saved = json.loads(json.dumps(half.get_state()))
    refreshed = [[a.key(), s] for bank in half.banks for a, s in bank]
    resumed = make_sampler("elasticvit", tiny, seed=99, tables="none")
    resumed.set_state(saved)
    assert [[a.key(), s] for bank in resumed.banks for a, s in bank] == refreshed
    resumed, rest = run(13, resumed, step0=17)
    assert first + rest == calls
    assert resumed.get_state() == full.get_state()


def test_bank_scorer_scores_minus_ce_of_a_train_mode_forward(tiny):
    from elasticvit_tf.supernet import ElasticSupernet

    net = ElasticSupernet(tiny, 3, num_slots=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1], np.int32)
    skips = []

    def batches(skip):
        skips.append(skip)
        return iter([(tf.constant(x), tf.constant(y))] * 3)

    state = cb.RunState(0, rescore_batches=5)
    scorer = cb.BankScorer(net, tf.distribute.get_strategy(), batches, state)
    archs = [tiny.min_arch(), tiny.max_arch()]
    scores = scorer(archs)
    for arch, score in zip(archs, scores):
        net.set_arch(arch, 0)
        logits = net(tf.constant(x), training=True, slot=0)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        assert score == pytest.approx(-float(ce), rel=1e-5)
    scorer(archs[:1])
    assert skips == [5] and state.rescore_batches == 7

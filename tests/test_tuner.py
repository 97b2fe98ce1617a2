"""SupernetTuner (search/tuner.py): trials as subnet evaluations, cache, resume after SIGKILL."""

import collections
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
from keras_tuner.engine.trial import Trial, TrialStatus
from search_fakes import FakePredictor, fake_top1

from elasticvit_tf.flops import count_flops
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.search.hyperparameters import arch_to_values, values_to_arch
from elasticvit_tf.search.oracle import ConstrainedEvolutionOracle
from elasticvit_tf.search.tuner import SupernetTuner
from elasticvit_tf.space import get_space

HERE = os.path.dirname(os.path.abspath(__file__))


class CountingEvaluator:
    def __init__(self, space):
        self.space, self.calls = space, collections.Counter()

    def __call__(self, arch):
        self.calls[arch.key()] += 1
        return fake_top1(self.space, arch)


def _tuner(tmp_path, space, evaluator, max_trials):
    pred = FakePredictor(space, ms_per_mflop=2.0)
    oracle = ConstrainedEvolutionOracle(
        space,
        pred,
        latency_budgets=LatencyBudgets((4.0,)),
        max_trials=max_trials,
        population=6,
        parents=3,
        seed=3,
    )
    return SupernetTuner(
        oracle, space, evaluator, predictor=pred, directory=str(tmp_path), project_name="p"
    )


def test_search_reports_metrics_caches_and_resumes(tmp_path):
    space = get_space("tiny")
    ev = CountingEvaluator(space)
    tuner = _tuner(tmp_path, space, ev, 12)
    tuner.search(verbose=0)
    trials = tuner.oracle.trials
    assert len(trials) == 12 and tuner.evaluations == 12
    assert all(t.status == TrialStatus.COMPLETED for t in trials.values())
    for t in trials.values():
        arch = tuner.oracle.trial_arch(t)
        assert t.score == pytest.approx(fake_top1(space, arch))
        assert t.metrics.get_last_value("latency_ms") == pytest.approx(
            2.0 * count_flops(space, arch)
        )
        assert t.metrics.get_last_value("mflops") == pytest.approx(count_flops(space, arch))
        assert t.metrics.get_last_value("latency_ms") <= 4.0
    assert max(ev.calls.values()) == 1
    cache = json.loads((tmp_path / "p" / "eval_cache_tuner0.json").read_text())
    assert len(cache["results"]) == 12 and cache["meta"]["space_hash"] == space.fingerprint()
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.score == max(t.score for t in trials.values())

    # Same project again: nothing left to do, nothing re-evaluated.
    ev2 = CountingEvaluator(space)
    again = _tuner(tmp_path, space, ev2, 12)
    again.search(verbose=0)
    assert len(again.oracle.trials) == 12 and not ev2.calls
    # A larger max_trials continues the same search.
    more = _tuner(tmp_path, space, ev2, 16)
    more.search(verbose=0)
    assert len(more.oracle.trials) == 16 and sum(ev2.calls.values()) == 4
    keys = [more.oracle.trial_arch(t).key() for t in more.oracle.trials.values()]
    assert len(set(keys)) == 16


def test_cache_hit_skips_the_evaluator(tmp_path):
    space = get_space("tiny")
    ev = CountingEvaluator(space)
    tuner = _tuner(tmp_path, space, ev, 4)
    arch = space.min_arch()
    tuner.cache.put(arch.key(), {"top1": 0.123})

    trial = types.SimpleNamespace(
        hyperparameters=types.SimpleNamespace(values=arch_to_values(space, arch))
    )
    out = tuner.run_trial(trial)
    assert out["top1"] == 0.123 and not ev.calls
    assert out["mflops"] == pytest.approx(count_flops(space, arch))


def _driver(directory, log, max_trials, sleep, summary=None):
    cmd = [
        sys.executable,
        os.path.join(HERE, "search_fakes.py"),
        "--directory",
        str(directory),
        "--log",
        str(log),
        "--max_trials",
        str(max_trials),
        "--population",
        "8",
        "--sleep",
        str(sleep),
    ]
    if summary:
        cmd += ["--summary", str(summary)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERASTUNER_ORACLE_IP", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_search_then_rerun_resumes(tmp_path):
    log = tmp_path / "evals.log"
    proc = _driver(tmp_path, log, 20, sleep=0.4)
    deadline = time.time() + 90
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 7:
            break
        if proc.poll() is not None:
            pytest.fail(f"driver exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(log.read_text().splitlines())
    assert 7 <= done_before < 20

    summary = tmp_path / "summary.json"
    proc = _driver(tmp_path, log, 20, sleep=0.0, summary=summary)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]

    space = get_space("tiny")
    project = tmp_path / "p"
    trials = [
        Trial.load(str(project / d / "trial.json"))
        for d in os.listdir(project)
        if d.startswith("trial_")
    ]
    assert len(trials) == 20  # nothing lost
    assert all(t.status == TrialStatus.COMPLETED for t in trials)
    keys = [values_to_arch(space, t.hyperparameters.values).key() for t in trials]
    assert len(set(keys)) == 20  # nothing repeated
    evaluated = [line.split()[1] for line in log.read_text().splitlines()]
    counts = collections.Counter(evaluated)
    assert set(counts) == set(keys)
    # At most the one evaluation in flight at the kill runs twice (its result was not cached).
    assert sum(c - 1 for c in counts.values()) <= 1
    result = json.loads(summary.read_text())
    assert result["trials"] == 20 and result["evaluations"] == 20 - (
        done_before - sum(c - 1 for c in counts.values())
    )
    assert (project / "pareto.json").is_file() and (project / "report.md").is_file()

"""Constrained evolution / random oracles (search/oracle.py), driven without a tuner."""

import json

import numpy as np
import pytest
from keras_tuner.engine.trial import TrialStatus
from search_fakes import FakePredictor, enumerate_archs, fake_top1, small_space

from elasticvit_tf.flops import count_flops
from elasticvit_tf.search import oracle as oracle_lib
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.space import get_space


def _open(oracle, directory, project="p"):
    oracle._set_project_dir(str(directory), project)
    oracle.verbose = 0
    return oracle


def _drive(oracle, space, n=None, tuner_id="t0"):
    """Runs trials serially with the fake fitness; returns the emitted archs in order."""
    archs = []
    while n is None or len(archs) < n:
        trial = oracle.create_trial(tuner_id)
        if trial.status != TrialStatus.RUNNING:
            break
        arch = oracle.trial_arch(trial)
        archs.append(arch)
        oracle.update_trial(trial.trial_id, {"top1": fake_top1(space, arch)})
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
    return archs


def _evolution(space, pred, budget, **kw):
    kw = {"population": 8, "parents": 4, "max_trials": 40, "seed": 0, **kw}
    budgets = LatencyBudgets(() if budget is None else (budget,))
    return oracle_lib.ConstrainedEvolutionOracle(space, pred, latency_budgets=budgets, **kw)


@pytest.mark.slow
def test_evolution_finds_in_budget_optimum_and_beats_random(tmp_path):
    space = small_space()
    pred = FakePredictor(space)
    archs = list(enumerate_archs(space))
    assert len(archs) == 2048
    lat = np.array([pred.predict(a) for a in archs])
    budget = float(np.percentile(lat, 40))
    optimum = max(fake_top1(space, a) for a, ms in zip(archs, lat) if ms <= budget)
    assert optimum < max(fake_top1(space, a) for a in archs)  # the budget binds
    evo, rnd = [], []
    for seed in range(4):
        kw = dict(latency_budgets=LatencyBudgets((budget,)), max_trials=150, seed=seed)
        o = _open(
            oracle_lib.ConstrainedEvolutionOracle(space, pred, population=16, parents=8, **kw),
            tmp_path,
            f"e{seed}",
        )
        evo.append(max(fake_top1(space, a) for a in _drive(o, space)))
        o = _open(oracle_lib.ConstrainedRandomOracle(space, pred, **kw), tmp_path, f"r{seed}")
        rnd.append(max(fake_top1(space, a) for a in _drive(o, space)))
    assert sum(v == optimum for v in evo) >= 3, (evo, optimum)
    assert np.mean(evo) > np.mean(rnd), (evo, rnd)


@pytest.mark.parametrize("kind", ["evolution", "random"])
def test_never_emits_an_arch_over_budget_or_outside_the_window(tmp_path, kind):
    space = get_space("tiny")
    pred = FakePredictor(space, ms_per_mflop=2.0)
    rng = np.random.default_rng(0)
    lat = [pred.predict(space.sample(rng)) for _ in range(500)]
    budget = float(np.percentile(lat, 30))
    window = (0.5, 2.5)
    kw = dict(
        latency_budgets=LatencyBudgets((budget,)), mflops_range=window, max_trials=150, seed=1
    )
    if kind == "evolution":
        # mutation_prob 1 and uniform draws: maximal pressure towards invalid children.
        o = oracle_lib.ConstrainedEvolutionOracle(
            space, pred, population=10, parents=5, mutation_prob=1.0, uniform_prob=1.0, **kw
        )
    else:
        o = oracle_lib.ConstrainedRandomOracle(space, pred, **kw)
    archs = _drive(_open(o, tmp_path), space)
    assert len(archs) == 150
    assert o.rejections > 0  # the constraints did reject candidates
    assert all(pred.predict(a) <= budget for a in archs)
    assert all(window[0] <= count_flops(space, a) <= window[1] for a in archs)
    assert len({a.key() for a in archs}) == len(archs)  # deduped


def test_infeasible_budget_stops_and_is_detected_up_front(tmp_path):
    space = get_space("tiny")
    pred = FakePredictor(space)
    smallest = pred.predict(space.min_arch())
    with pytest.raises(ValueError, match="below the smallest subnet's predicted latency"):
        oracle_lib.check_feasible(space, pred, LatencyBudgets((0.5 * smallest, smallest)))
    with pytest.raises(ValueError, match="does not overlap the FLOPs"):
        oracle_lib.check_feasible(space, pred, mflops_range=(100, 200))
    oracle_lib.check_feasible(space, pred, LatencyBudgets((smallest,)), mflops_range=(0, 1))
    for o in (
        _evolution(space, pred, 0.5 * smallest, max_attempts=50),
        oracle_lib.ConstrainedRandomOracle(
            space, pred, latency_budgets=LatencyBudgets((0.5 * smallest,))
        ),
    ):
        trial = _open(o, tmp_path, type(o).__name__).create_trial("t0")
        assert trial.status == TrialStatus.STOPPED
        assert "no new arch satisfying the constraints" in o.stop_reason
        assert o.trials == {}
    # Each constraint alone is feasible, both together are not: bounded retries, then STOPPED.
    o = _evolution(space, pred, 1.01 * smallest, mflops_range=(3.0, 4.0), max_attempts=30)
    assert _open(o, tmp_path, "both").create_trial("t0").status == TrialStatus.STOPPED


def test_resume_continues_the_exact_sequence(tmp_path):
    space = get_space("tiny")
    pred = FakePredictor(space)
    budget = 1.5
    straight = _drive(_open(_evolution(space, pred, budget), tmp_path, "a"), space)
    assert len(straight) == 40
    first = _drive(_open(_evolution(space, pred, budget), tmp_path, "b"), space, n=19)
    resumed = _open(_evolution(space, pred, budget), tmp_path, "b")
    resumed.reload()
    assert len(resumed.trials) == 19 and resumed.generation == 3  # 8 + 4 + 4 + 3
    rest = _drive(resumed, space)
    assert [a.key() for a in first + rest] == [a.key() for a in straight]


def test_resume_refuses_other_settings(tmp_path):
    space = get_space("tiny")
    pred = FakePredictor(space)
    _drive(_open(_evolution(space, pred, 1.5), tmp_path), space, n=3)
    other = _open(_evolution(space, pred, 2.0), tmp_path)
    with pytest.raises(ValueError, match="latency_budget_ms=1.5.*latency_budget_ms=2.0"):
        other.reload()
    other = _open(_evolution(space, pred, 1.5, population=6, parents=3), tmp_path)
    with pytest.raises(ValueError, match="population=8"):
        other.reload()


def test_idle_while_the_initial_population_runs(tmp_path):
    space = get_space("tiny")
    pred = FakePredictor(space)
    o = _open(_evolution(space, pred, 2.0, population=4, parents=2), tmp_path)
    trials = [o.create_trial(f"t{i}") for i in range(4)]
    assert all(t.status == TrialStatus.RUNNING for t in trials)
    assert o.create_trial("t4").status == TrialStatus.IDLE  # generation 0 still running
    for t in trials[:3]:
        o.update_trial(t.trial_id, {"top1": fake_top1(space, o.trial_arch(t))})
        t.status = TrialStatus.COMPLETED
        o.end_trial(t)
    assert o.create_trial("t4").status == TrialStatus.IDLE
    trials[3].status = TrialStatus.FAILED  # a failed trial ends its slot too
    o.end_trial(trials[3])
    child = o.create_trial("t4")
    assert child.status == TrialStatus.RUNNING
    assert o.generation == 1 and o.trial_generation[child.trial_id] == 1
    assert len(o.current_parents) == 2
    assert set(o.current_parents) <= {t.trial_id for t in trials[:3]}


def test_mutation_applies_resolution_reaches_max_depth_keeps_stem(tmp_path):
    space = get_space("tiny")
    o = _evolution(space, None, None, mutation_prob=1.0, depth_mutation_prob=1.0)
    parent = space.min_arch()
    children = [o.mutate([parent]) for _ in range(300)]
    assert all(space.contains(c) for c in children)
    # Resolution mutation is written back (official bug fixed), drawn uniformly.
    share = np.mean([c.resolution != parent.resolution for c in children])
    assert 0.35 < share < 0.65
    # The max depth is reachable (official range(min, max) bug fixed).
    assert any(c.stages[3].depth == max(space.stages[3].depths) for c in children)
    # The stem is kept, kernel included (the official code resets it to 3).
    p5 = parent.replace(stem=parent.stem.__class__(8, 2, 5))
    p5 = p5.replace_stage(0, width=8)
    assert all(o.mutate([p5]).stem == p5.stem for _ in range(50))
    # Min-biased draw: with uniform_prob 0.45 a mutated value is the minimum ~0.55 + 0.45/2.
    mins = np.mean([c.stages[3].mlp_ratio == 1 for c in children])
    assert 0.65 < mins < 0.87


def test_crossover_mixes_whole_vectors():
    space = get_space("tiny")
    o = _evolution(space, None, None)
    a, b = space.min_arch(), space.max_arch()
    kids = [o.crossover([a, b]) for _ in range(200)]
    assert all(space.contains(k) for k in kids)
    for k in kids:  # the width vector comes from one parent as a whole
        assert k.widths in (a.widths, b.widths)
        assert k.depths in (a.depths, b.depths)
    assert len({k.key() for k in kids}) > 20
    assert o.crossover([a]) is None


def test_memory_bank_archs_open_the_population(tmp_path):
    space = get_space("tiny")
    pred = FakePredictor(space)
    rng = np.random.default_rng(5)
    bank = [space.sample(rng) for _ in range(6)]
    budget = sorted(pred.predict(a) for a in bank)[3]  # 4 of 6 fit
    bank.insert(2, get_space("demo").min_arch())  # not in this space: skipped
    bank.append(bank[0])  # duplicate: skipped
    o = _open(_evolution(space, pred, budget, initial_archs=bank), tmp_path)
    archs = _drive(o, space, n=8)
    fits = [a for a in bank[:2] + bank[3:7] if pred.predict(a) <= budget]
    assert [a.key() for a in archs[:4]] == [a.key() for a in fits]
    assert all(pred.predict(a) <= budget for a in archs)


def test_reload_repairs_a_kill_between_file_writes(tmp_path):
    space = get_space("tiny")
    pred = FakePredictor(space)
    o = _open(_evolution(space, pred, 2.0), tmp_path)
    _drive(o, space, n=2)
    t2 = o.create_trial("t0")
    # As if killed right after end_trial("01") saved oracle.json (before ongoing was popped)
    # and right after trial "02" was written (before oracle.json recorded it).
    path = tmp_path / "p" / "oracle.json"
    state = json.loads(path.read_text())
    state["ongoing_trials"] = {"t0": "01"}
    state["start_order"] = ["00", "01"]
    state["end_order"] = ["00"]
    state["elasticvit"]["trial_generation"].pop(t2.trial_id)
    path.write_text(json.dumps(state))
    r = _open(_evolution(space, pred, 2.0), tmp_path)
    r.reload()
    assert r._retry_queue == [t2.trial_id]
    assert r.end_order == ["00", "01"]
    again = r.create_trial("t0")
    assert again.trial_id == t2.trial_id
    assert again.hyperparameters.values == t2.hyperparameters.values


def test_bad_arguments():
    space = get_space("tiny")
    with pytest.raises(ValueError, match="no latency predictor"):
        oracle_lib.ConstrainedRandomOracle(space, None, latency_budgets=LatencyBudgets((1.0,)))
    with pytest.raises(ValueError, match="parents=8"):
        oracle_lib.ConstrainedEvolutionOracle(space, population=8, parents=8)
    with pytest.raises(ValueError, match="mflops_range"):
        oracle_lib.ConstrainedRandomOracle(space, mflops_range=(3, 1))


@pytest.mark.parametrize("kind", ["evolution", "random"])
def test_budget_strata_give_every_budget_candidates(tmp_path, kind):
    space = small_space()
    pred = FakePredictor(space)
    lat = np.array([pred.predict(a) for a in enumerate_archs(space)])
    tight, mid, loose = (float(np.percentile(lat, q)) for q in (3, 40, 80))
    cls = {"evolution": _evolution, "random": None}[kind]

    def make(strata):
        budgets = LatencyBudgets(strata or (loose,))  # several budgets: strata
        if cls is None:
            return oracle_lib.ConstrainedRandomOracle(
                space, pred, latency_budgets=budgets, max_trials=24, seed=1
            )
        return oracle_lib.ConstrainedEvolutionOracle(
            space, pred, latency_budgets=budgets, max_trials=24, seed=1, population=8, parents=4
        )

    def per_budget(archs):
        ms = [pred.predict(a) for a in archs]
        return [sum(m <= b for m in ms) for b in (tight, mid, loose)]

    plain = per_budget(_drive(_open(make(()), tmp_path, f"{kind}_plain"), space))
    strat = _drive(_open(make((tight, mid, loose)), tmp_path, f"{kind}_strata"), space)
    counts = per_budget(strat)
    assert max(pred.predict(a) for a in strat) <= loose
    # ~3 % of the space fits the tight budget: without strata it gets ~0-1 of 24 trials.
    assert plain[0] <= 2 and counts[0] >= 4, (plain, counts)
    # Resume keeps the stratum sequence (the draw counter is part of the oracle state).
    first = _drive(_open(make((tight, mid, loose)), tmp_path, f"{kind}_r"), space, n=10)
    resumed = _open(make((tight, mid, loose)), tmp_path, f"{kind}_r")
    resumed.reload()
    assert [a.key() for a in first + _drive(resumed, space)] == [a.key() for a in strat]
    # Budgets without a predictor are refused; plain numbers are not budgets.
    with pytest.raises(ValueError, match="no latency predictor"):
        oracle_lib.ConstrainedRandomOracle(space, None, latency_budgets=LatencyBudgets((tight,)))
    with pytest.raises(ValueError, match="expected a LatencyBudgets"):
        oracle_lib.ConstrainedRandomOracle(space, pred, latency_budgets=(tight, loose))

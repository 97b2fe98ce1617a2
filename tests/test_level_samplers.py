"""Tests for elasticvit_tf.sampling.level_samplers: complexity-aware, performance-aware, elasticvit."""

import json
import zlib

import numpy as np
import pytest

from elasticvit_tf.flops import count_flops
from elasticvit_tf.sampling import level_tables, registry
from elasticvit_tf.space import get_space


def _keys(step):
    return [a.key() for a in step.archs]


# ------------------------------------------------------------------------ level samplers
LEVEL_SAMPLERS = ("complexity_aware", "performance_aware", "elasticvit")


def _score(arch):
    """A deterministic fake score (-CE) per arch."""
    return -(zlib.crc32(arch.key().encode()) % 1000) / 100.0


def _drive(sampler, n, epoch_every=0):
    """Steps with deterministic bank updates; returns the per-step keys, levels, from_bank."""
    out = []
    for k in range(n):
        st = sampler.sample_step()
        sampler.update_scores([(a, _score(a)) for a, r in zip(st.archs, st.roles) if r != "min"])
        out.append((_keys(st), st.level, st.from_bank))
        if epoch_every and (k + 1) % epoch_every == 0:
            sampler.end_epoch()
    return out


def _make(name, space_name="tiny", seed=0, **cfg):
    cfg.setdefault("tables", "none")
    return registry.make_sampler(name, get_space(space_name), seed=seed, **cfg)


@pytest.mark.parametrize("name", LEVEL_SAMPLERS)
@pytest.mark.parametrize("space_name", ["tiny", "demo"])
def test_level_samples_in_space_and_in_bin(name, space_name):
    space = get_space(space_name)
    cfg = {} if name == "complexity_aware" else {"p_bank_every_epochs": 1}
    s = _make(name, space_name, seed=1, **cfg)
    for k in range(60):
        st = s.sample_step()
        s.update_scores([(a, _score(a)) for a in st.archs[:-1]])
        if k % 20 == 19:
            s.end_epoch()
        assert st.roles == ("uniform", "uniform", "uniform", "min")
        assert st.level in space.flops_levels
        lo, hi = space.level_bin(st.level)
        for a in st.archs:
            space.validate_arch(a)
        for a in st.archs[:-1]:
            assert lo - 1e-9 <= count_flops(space, a) <= hi + 1e-9
        assert st.archs[-1] == space.select_min_arch(st.level)


@pytest.mark.parametrize("name", LEVEL_SAMPLERS)
def test_elasticvit_space_level_samples_in_bin(name):
    space = get_space("elasticvit")
    s = _make(name, "elasticvit", seed=2)
    for _ in range(4):
        st = s.sample_step()
        lo, hi = space.level_bin(st.level)
        assert all(lo <= count_flops(space, a) <= hi for a in st.archs[:-1])
        assert all(space.contains(a) for a in st.archs)
        assert st.archs[-1] == space.select_min_arch(st.level)


def test_complexity_aware_adjacent_steps_and_all_levels_visited():
    s = _make("complexity_aware", "tiny", seed=4)
    levels = list(s.levels)
    prev = 0  # the walk starts at level index 0
    visited = set()
    for k in range(2000):
        st = s.sample_step()
        i = levels.index(st.level)
        assert abs(i - prev) <= 1
        visited.add(i)
        prev = i
        if k % 100 == 99:  # the extra lazy step after an epoch also moves by <= 1
            s.end_epoch()
            assert abs(s.level_index - prev) <= 1
            prev = s.level_index
    assert visited == set(range(len(levels)))


def test_lazy_step_moves():
    s = _make("complexity_aware", "tiny", seed=0)
    last = len(s.levels) - 1
    from_zero = {s.lazy_step(0) for _ in range(200)}
    from_last = {s.lazy_step(last) for _ in range(200)}
    inside = {s.lazy_step(2) for _ in range(200)}
    assert from_zero == {0, 1} and from_last == {last - 1, last} and inside == {1, 2, 3}
    zeros = sum(s.lazy_step(0) == 0 for _ in range(3000))
    assert 1800 < zeros < 2200  # stays with probability 2/3 at the ends


def test_performance_aware_draws_levels_uniformly():
    s = _make("performance_aware", "tiny", seed=0)
    levels = [s.sample_step().level for _ in range(500)]
    jumps = [abs(s.levels.index(a) - s.levels.index(b)) for a, b in zip(levels, levels[1:])]
    assert max(jumps) >= 2
    counts = np.bincount([s.levels.index(v) for v in levels], minlength=len(s.levels))
    assert counts.min() > 60  # ~100 each


@pytest.mark.parametrize("name", LEVEL_SAMPLERS)
def test_level_samplers_same_seed_same_sequence(name):
    a = _drive(_make(name, "demo", seed=5), 40, epoch_every=10)
    b = _drive(_make(name, "demo", seed=5), 40, epoch_every=10)
    c = _drive(_make(name, "demo", seed=6), 40, epoch_every=10)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", LEVEL_SAMPLERS)
@pytest.mark.parametrize("space_name", ["tiny", "demo"])
def test_level_samplers_resume_exactly_through_json(name, space_name):
    cfg = {} if name == "complexity_aware" else {"p_bank_every_epochs": 1}
    ref = _make(name, space_name, seed=9, **cfg)
    _drive(ref, 120, epoch_every=25)  # banks warm, p_bank raised, several epochs
    state = json.loads(json.dumps(ref.get_state()))
    expected = _drive(ref, 80, epoch_every=25)
    resumed = _make(name, space_name, seed=0, **cfg)
    resumed.set_state(state)
    assert _drive(resumed, 80, epoch_every=25) == expected
    if name != "complexity_aware":
        assert any(fb for _, _, fbs in expected for fb in fbs)  # bank draws were exercised
        assert resumed.bank_sizes() == ref.bank_sizes()


def test_set_state_refuses_other_levels():
    s = _make("elasticvit", "tiny")
    state = s.get_state()
    other = _make("elasticvit", "tiny", levels=(0.5, 0.9))
    with pytest.raises(ValueError, match="levels"):
        other.set_state(state)


# ---------------------------------------------------------------------------------- banks
def _in_bin_archs(sampler, level_index, n):
    seen, out = set(), []
    for _ in range(50 * n):
        a = sampler.sample_in_bin(level_index)
        if a.key() not in seen:
            seen.add(a.key())
            out.append(a)
        if len(out) == n:
            break
    return out


def test_bank_capacity_best_entries_survive_and_rescoring():
    s = _make("performance_aware", "demo", seed=0, bank_size=10, big_bank_size=5)
    st = s.sample_step()
    i = s.levels.index(st.level)
    cap = s.capacity(i)
    archs = _in_bin_archs(s, i, 40)
    scores = np.random.default_rng(0).normal(size=len(archs))
    s.update_scores(list(zip(archs, scores)))
    bank = s.bank(st.level)
    assert len(bank) == cap
    best = sorted(scores)[-cap:]
    assert sorted(sc for _, sc in bank) == pytest.approx(best)
    # re-scoring an entry replaces its score, it does not add a duplicate
    a0 = bank[0][0]
    s.update_scores([(a0, 123.0)])
    assert len(s.bank(st.level)) == cap
    assert {a.key(): sc for a, sc in s.bank(st.level)}[a0.key()] == 123.0
    # a worse new arch does not enter a full bank; NaN scores are ignored
    newcomer = _in_bin_archs(s, i, 45)[-1]
    s.update_scores([(newcomer, min(best) - 1.0), (archs[0], float("nan"))])
    assert newcomer.key() not in {a.key() for a, _ in s.bank(st.level)}


def test_bank_ignores_min_arch_and_out_of_bin():
    s = _make("elasticvit", "demo", seed=0)
    st = s.sample_step()
    i = s.levels.index(st.level)
    other = (i + 2) % len(s.levels)
    outside = _in_bin_archs(s, other, 1)[0]
    s.update_scores([(st.archs[-1], 0.0), (outside, 0.0), (st.archs[0], -1.0)])
    assert [a.key() for a, _ in s.bank(st.level)] == [st.archs[0].key()]
    assert sum(s.bank_sizes().values()) == 1


def test_bank_sampling_softmax_and_schedule():
    s = _make("performance_aware", "tiny", seed=3, bank_size=6, big_bank_size=6, p_bank=1.0)
    st = s.sample_step()
    i = s.levels.index(st.level)
    archs = _in_bin_archs(s, i, 6)
    s.update_scores([(a, -20.0) for a in archs[1:]] + [(archs[0], 0.0)])  # archs[0] dominates
    picks = [s._sample_level_arch(i) for _ in range(30)]
    assert all(fb for _, fb in picks)
    assert all(a.key() == archs[0].key() for a, _ in picks)
    sched = _make("performance_aware", "tiny", p_bank_every_epochs=2)
    ps = [sched.p_bank]
    for _ in range(4):
        sched.end_epoch()
        ps.append(sched.p_bank)
    # epoch e has p = 0.2 + 0.15 * ((e + 1) // 2): epochs 0..4
    assert ps == pytest.approx([0.2, 0.35, 0.35, 0.5, 0.5])


def test_official_bank_defaults_and_big_level():
    s = _make("elasticvit", "elasticvit")
    assert s.levels == (100, 200, 300, 400, 500, 700, 900, 1200)
    assert [s.capacity(i) for i in range(8)] == [150] * 4 + [50] * 4
    assert s.p_bank == pytest.approx(0.2) and s.num_candidates == 5


def test_preference_picks_wide_and_shallow():
    space = get_space("demo")
    s = _make("performance_aware", "demo", seed=0, bank_size=2, big_bank_size=2)
    base = space.min_arch()
    wide, deep = base, base
    for j, st in enumerate(space.stages):
        if st.is_transformer:
            wide = wide.replace_stage(j, width=max(st.widths), depth=min(st.depths))
            deep = deep.replace_stage(j, width=min(st.widths), depth=max(st.depths))
    # anchor = global min arch (bank of the lowest level empty): shrinking wide's widths
    # removes a lot, shrinking its depths nothing -> large negative diff
    d_wide, d_deep = s.preference_diff(wide, 1), s.preference_diff(deep, 1)
    assert d_wide < 0 < d_deep
    # with a warm bank the candidate with the smallest diff is kept, wherever it comes
    s.banks[2] = [[deep, -1.0], [deep, -2.0]]
    s.p_bank = 0.0
    queue = [deep, deep, wide, deep, deep]
    s.sample_in_bin = lambda i: queue.pop(0)
    arch, from_bank = s._sample_level_arch(2)
    assert arch == wide and not from_bank and not queue
    # a cold bank returns the first candidate without comparing
    s.banks[3] = []
    queue[:] = [deep, wide]
    assert s._sample_level_arch(3)[0] == deep and queue == [wide]


def test_preference_anchor_uses_lowest_bank_best():
    s = _make("elasticvit", "tiny", seed=0)
    a, b = _in_bin_archs(s, 0, 2)
    s.banks[0] = [[a, -3.0], [b, -1.0]]
    assert s.preference_anchor(2) == b
    assert s.preference_anchor(0) == get_space("tiny").min_arch()


def test_archs_to_rescore_points():
    s = _make("elasticvit", "tiny", seed=0)
    _drive(s, 30)
    cur = s.levels.index(s.sample_step().level)
    all_archs = [a for bank in s.banks for a, _ in bank]
    assert s.archs_to_rescore(0, 100) == all_archs and all_archs
    cur_archs = [a for a, _ in s.banks[cur]]
    assert [s.archs_to_rescore(b, 100) for b in (24, 49, 74)] == [cur_archs] * 3
    assert s.archs_to_rescore(99, 100) == [] and s.archs_to_rescore(10, 100) == []
    assert _make("elasticvit", "tiny", rescore="none").archs_to_rescore(0, 100) == []
    assert registry.make_sampler("uniform", get_space("tiny"), 0).archs_to_rescore(0) == []


# ---------------------------------------------------------------------------- tables, cfg
def test_sampler_uses_tables_and_resumes_with_them(tmp_path):
    space = get_space("tiny")
    s = registry.make_sampler(
        "elasticvit", space, seed=0, tables="build", table_size=50, cache_dir=str(tmp_path)
    )
    assert len(list(tmp_path.glob("*.npz"))) == len(s.levels)
    table_keys = {
        i: {level_tables.decode(space, r).key() for r in s._tables[i].archs}
        for i in range(len(s.levels))
    }
    for _ in range(20):
        st = s.sample_step()
        i = s.levels.index(st.level)
        assert all(a.key() in table_keys[i] for a in st.archs[:-1])
    state = json.loads(json.dumps(s.get_state()))
    expected = _drive(s, 30)
    # resumes exactly even when the new sampler was created without tables
    resumed = registry.make_sampler(
        "elasticvit", space, seed=1, tables="none", table_size=50, cache_dir=str(tmp_path)
    )
    resumed.set_state(state)
    assert _drive(resumed, 30) == expected
    # "auto" picks up the cached tables only
    auto = registry.make_sampler(
        "complexity_aware", space, seed=0, tables="auto", table_size=50, cache_dir=str(tmp_path)
    )
    assert sorted(auto._tables) == list(range(len(s.levels)))
    auto_cold = registry.make_sampler(
        "complexity_aware", space, 0, tables="auto", cache_dir=str(tmp_path / "cold")
    )
    assert auto_cold._tables == {}


def test_default_tables_make_sequence_independent_of_cache(tmp_path):
    space = get_space("demo")
    cold = registry.make_sampler("elasticvit", space, 4, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.npz"))) == len(cold.levels)  # built and cached
    warm = registry.make_sampler("elasticvit", space, 4, cache_dir=str(tmp_path))
    assert _drive(cold, 40) == _drive(warm, 40)


def test_bad_level_config():
    space = get_space("tiny")
    with pytest.raises(ValueError, match="infeasible"):
        registry.make_sampler("complexity_aware", space, 0, levels=(0.1,), tables="none")
    with pytest.raises(ValueError, match="strictly increasing"):
        registry.make_sampler("complexity_aware", space, 0, levels=(1.1, 0.5))
    with pytest.raises(ValueError, match="tables"):
        registry.make_sampler("complexity_aware", space, 0, tables="sometimes")
    with pytest.raises(ValueError, match="rescore"):
        registry.make_sampler("elasticvit", space, 0, rescore="always", tables="none")
    with pytest.raises(ValueError, match="bad configuration"):
        registry.make_sampler("complexity_aware", space, 0, bank_size=3)


def test_resume_rebuilds_a_stale_cached_table(tmp_path):
    space = get_space("tiny")
    s = registry.make_sampler("complexity_aware", space, 2, table_size=40, cache_dir=tmp_path)
    state = json.loads(json.dumps(s.get_state()))
    expected = _drive(s, 20)
    # overwrite every cached table with different archs (as a stale cache would hold)
    for i, level in enumerate(s.levels):
        path = level_tables.table_path(space, level, 40, cache_dir=tmp_path)
        level_tables.save_table(level_tables.build_table(space, level, 40, seed=99), path)
    resumed = registry.make_sampler(
        "complexity_aware", space, 0, tables="none", table_size=40, cache_dir=tmp_path
    )
    resumed.set_state(state)
    assert _drive(resumed, 20) == expected


def test_end_epoch_drops_out_of_bin_bank_entries():
    s = _make("elasticvit", "demo", seed=0)
    inside = _in_bin_archs(s, 1, 2)
    outside = _in_bin_archs(s, 3, 1)[0]
    s.banks[1] = [[inside[0], -1.0], [outside, -0.5], [inside[1], -2.0]]
    s.end_epoch()
    assert [a for a, _ in s.banks[1]] == inside


def test_bank_archs_of_a_saved_state_best_first():
    from elasticvit_tf.sampling.level_samplers import bank_archs

    s = _make("elasticvit", "tiny", seed=1)
    _drive(s, 40)
    state = json.loads(json.dumps(s.get_state()))
    entries = sorted((e for bank in s.banks for e in bank), key=lambda e: -e[1])
    assert [a.key() for a in bank_archs(state)] == [a.key() for a, _ in entries] and entries
    assert bank_archs(registry.make_sampler("uniform", get_space("tiny"), 0).get_state()) == []
    with pytest.raises(ValueError, match="banks"):
        bank_archs({"banks": [[["not an arch", 1.0]]]})


def test_default_sampler_touches_no_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(level_tables.CACHE_ENV, str(tmp_path / "env"))
    s = registry.make_sampler("elasticvit", get_space("tiny"), 3, table_size=50)
    assert sorted(s._tables) == list(range(len(s.levels)))  # built in memory
    state = json.loads(json.dumps(s.get_state()))
    resumed = registry.make_sampler("elasticvit", get_space("tiny"), 0, tables="none")
    resumed.set_state(state)  # rebuilds the tables in memory for an exact resume
    assert _drive(resumed, 10) == _drive(s, 10)
    assert not any(tmp_path.iterdir())


def test_p_bank_schedule_scaled_to_the_run_length():
    space = get_space("tiny")
    s = registry.make_sampler("elasticvit", space, 0, total_steps=61, tables="none")
    assert s.p_bank_every_steps == 10  # round(61 * 100 / 610)
    seen = []
    for _ in range(61):
        s.sample_step()
        seen.append(s.p_bank)
    assert seen[0] == seen[9] == pytest.approx(0.2) and seen[10] == pytest.approx(0.35)
    assert seen[-1] == pytest.approx(0.2 + 6 * 0.15)  # the official six increments
    state = json.loads(json.dumps(s.get_state()))
    twin = registry.make_sampler("elasticvit", space, 5, total_steps=61, tables="none")
    twin.set_state(state)
    assert twin.p_bank == s.p_bank
    # an explicit period in the sampler's arguments overrides the scaled one
    own = registry.make_sampler(
        "elasticvit", space, 0, total_steps=61, tables="none", p_bank_every_epochs=3
    )
    assert own.p_bank_every_steps is None and own.p_bank_every_epochs == 3
    assert registry.make_sampler("uniform", space, 0, total_steps=61).get_config()["seed"] == 0

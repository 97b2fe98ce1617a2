"""Tests for elasticvit_tf.sampling.samplers and registry."""

import json

import numpy as np
import pytest

from elasticvit_tf.sampling import registry
from elasticvit_tf.sampling import samplers as samplers_lib
from elasticvit_tf.space import get_space

ALL = registry.SAMPLER_NAMES


def _keys(step):
    return [a.key() for a in step.archs]


def _run(sampler, n):
    return [_keys(sampler.sample_step()) for _ in range(n)]


# --------------------------------------------------------------------------------- basics
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("space_name", ["tiny", "demo", "elasticvit"])
def test_every_sample_in_space(name, space_name):
    space = get_space(space_name)
    cfg = {} if name in ("uniform", "sandwich", "sandwich_ce") else {"tables": "none"}
    s = registry.make_sampler(name, space, seed=3, **cfg)
    for _ in range(20 if space_name != "elasticvit" else 5):
        step = s.sample_step()
        assert step.num_subnets == 4 == s.num_subnets
        assert len(step.roles) == len(step.from_bank) == 4
        for a in step.archs:
            space.validate_arch(a)


def test_uniform_roles_and_spread():
    space = get_space("demo")
    s = registry.make_sampler("uniform", space, seed=0)
    steps = [s.sample_step() for _ in range(50)]
    assert all(st.roles == ("uniform",) * 4 and st.level is None for st in steps)
    keys = {a.key() for st in steps for a in st.archs}
    assert len(keys) > 150  # 200 draws from a space of ~1e8 archs are nearly all distinct
    assert steps[0].from_bank == (False,) * 4


def test_sandwich_roles_max_min():
    space = get_space("tiny")
    s = registry.make_sampler("sandwich", space, seed=0)
    st = s.sample_step()
    assert st.roles == ("max", "random", "random", "min")
    assert st.archs[0] == space.max_arch()
    assert st.archs[-1] == space.min_arch()
    s6 = registry.make_sampler("sandwich", space, seed=0, num_subnets=6)
    assert s6.sample_step().roles == ("max",) + ("random",) * 4 + ("min",)
    with pytest.raises(ValueError, match="num_subnets"):
        registry.make_sampler("sandwich", space, seed=0, num_subnets=1)


def test_unknown_sampler_lists_names():
    with pytest.raises(ValueError, match="complexity_aware.*elasticvit"):
        registry.make_sampler("bogus", get_space("tiny"), seed=0)


def test_bad_seed_and_config():
    with pytest.raises(ValueError, match="seed"):
        registry.make_sampler("uniform", get_space("tiny"), seed="x")
    with pytest.raises(ValueError, match="bad configuration"):
        registry.make_sampler("uniform", get_space("tiny"), seed=0, nonsense=1)


def test_step_sample_validates_lengths():
    a = get_space("tiny").min_arch()
    with pytest.raises(ValueError, match="equal lengths"):
        samplers_lib.StepSample((a, a), ("min",), None, (False, False))
    with pytest.raises(ValueError, match="unknown role"):
        samplers_lib.StepSample((a,), ("teacher",), None)


# -------------------------------------------------------------------- determinism, state
@pytest.mark.parametrize("name", ["uniform", "sandwich"])
def test_same_seed_same_sequence(name):
    space = get_space("demo")
    a = _run(registry.make_sampler(name, space, seed=7), 15)
    b = _run(registry.make_sampler(name, space, seed=7), 15)
    c = _run(registry.make_sampler(name, space, seed=8), 15)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", ["uniform", "sandwich"])
def test_set_state_resumes_exactly_through_json(name):
    space = get_space("demo")
    ref = registry.make_sampler(name, space, seed=11)
    _run(ref, 7)
    ref.end_epoch()
    state = json.loads(json.dumps(ref.get_state()))
    expected = _run(ref, 10)
    resumed = registry.make_sampler(name, space, seed=999)
    resumed.set_state(state)
    assert resumed.step == 7 and resumed.epoch == 1
    assert _run(resumed, 10) == expected


def test_set_state_refuses_other_space_or_sampler():
    s = registry.make_sampler("uniform", get_space("tiny"), seed=0)
    state = s.get_state()
    with pytest.raises(ValueError, match="fingerprint"):
        registry.make_sampler("uniform", get_space("demo"), seed=0).set_state(state)
    with pytest.raises(ValueError, match="saved by sampler 'uniform'"):
        registry.make_sampler("sandwich", get_space("tiny"), seed=0).set_state(state)
    with pytest.raises(ValueError, match="missing key"):
        s.set_state({"sampler": "uniform"})


def test_rng_is_private():
    space = get_space("tiny")
    s = registry.make_sampler("uniform", space, seed=5)
    a = _run(s, 3)
    np.random.seed(0)  # the global RNG must not matter
    s2 = registry.make_sampler("uniform", space, seed=5)
    np.random.rand(10)
    assert _run(s2, 3) == a


def test_registry_knows_every_sampler_and_samplers_do_not_import_it():
    import ast
    import inspect

    from elasticvit_tf.sampling import level_samplers

    assert registry.SAMPLERS["elasticvit"] is level_samplers.ElasticViTSampler
    assert all(issubclass(c, samplers_lib.Sampler) for c in registry.SAMPLERS.values())
    # one import direction: samplers <- level_samplers <- registry (lazy imports included)
    tree = ast.parse(inspect.getsource(samplers_lib))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if m.startswith("elasticvit_tf.sampling")}


@pytest.mark.parametrize("name", ALL)
def test_roles_property_matches_every_step(name):
    space = get_space("tiny")
    cfg = {} if name in ("uniform", "sandwich", "sandwich_ce") else {"tables": "none"}
    s = registry.make_sampler(name, space, seed=2, **cfg)
    roles = s.roles
    assert s.step == 0  # reading the roles does not advance the sampler
    assert all(s.sample_step().roles == roles for _ in range(5))


@pytest.mark.parametrize("name", ALL)
def test_get_config_rebuilds_an_equal_sampler(name):
    space = get_space("tiny")
    cfg = {} if name in ("uniform", "sandwich", "sandwich_ce") else {"tables": "none"}
    s = registry.make_sampler(name, space, seed=4, **cfg)
    config = json.loads(json.dumps(s.get_config()))
    assert config["name"] == name and config["space"] == "tiny" and config["seed"] == 4
    kwargs = {k: v for k, v in config.items() if k not in ("name", "space")}
    twin = registry.make_sampler(name, space, **kwargs)
    assert _run(twin, 5) == _run(s, 5)

"""space <-> keras_tuner.HyperParameters mapping (search/hyperparameters.py)."""

import numpy as np
import pytest

from elasticvit_tf.search import hyperparameters as hp_lib
from elasticvit_tf.space import get_space


@pytest.mark.parametrize("name", ["tiny", "demo", "elasticvit"])
def test_roundtrip_sampled_archs(name):
    space = get_space(name)
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        values = hp_lib.arch_to_values(space, arch)
        assert hp_lib.values_to_arch(space, values) == arch


def test_names_and_choices_match_space():
    space = get_space("tiny")
    hp = hp_lib.build_hyperparameters(space)
    names = [p.name for p in hp.space]
    # resolution + 3 stem dims + 4 per stage (width, depth, 2 kind-specific)
    assert len(names) == 1 + 3 + 4 * len(space.stages)
    assert names[:4] == ["resolution", "stem/width", "stem/depth", "stem/kernel"]
    assert "stage0/expand_ratio" in names and "stage5/v_scale" in names
    assert "stage0/mlp_ratio" not in names
    choice = {p.name: p for p in hp.space}
    assert list(choice["stage5/width"].values) == [32, 48]
    assert list(choice["resolution"].values) == [16, 24]
    # Defaults are the smallest values: they decode to the space's min arch.
    assert hp_lib.values_to_arch(space, hp.values) == space.min_arch()


def test_values_to_arch_errors_name_the_problem():
    space = get_space("tiny")
    values = hp_lib.arch_to_values(space, space.max_arch())
    bad = dict(values)
    del bad["stage3/width"]
    with pytest.raises(ValueError, match=r"missing \['stage3/width'\]"):
        hp_lib.values_to_arch(space, bad)
    bad = dict(values, extra=1)
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        hp_lib.values_to_arch(space, bad)
    with pytest.raises(ValueError, match="resolution=20"):
        hp_lib.values_to_arch(space, dict(values, resolution=20))


def test_decreasing_widths_are_refused():
    # Independent choices can express a decreasing width; the space refuses it.
    space = get_space("demo")
    values = hp_lib.arch_to_values(space, space.max_arch())
    bad = dict(values, **{"stage3/width": 64, "stage4/width": 48})
    with pytest.raises(ValueError, match=r"stages\[4\].width=48 is smaller than the previous"):
        hp_lib.values_to_arch(space, bad)

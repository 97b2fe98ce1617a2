"""Golden FLOPs/params: the official formula exactly (docs/method.md#flops table and the models
JSON)."""

import json
import os

import numpy as np
import pytest

from elasticvit_tf import blocks, flops
from elasticvit_tf.arch import OFFICIAL_ENCODINGS, OFFICIAL_MIN_ARCH_ENCODINGS
from elasticvit_tf.space import get_published_arch, get_space

# docs/method.md#flops reference table: (MFLOPs by the repo formula, params M of the standalone
# subnet).
GOLDEN = {
    "elastic_T1": (62.92, 8.91),
    "elastic_T2": (119.98, 9.30),
    "elastic_S1": (217.64, 10.84),
    "elastic_S2": (318.53, 10.23),
    "elastic_M": (415.58, 12.02),
    "elastic_L1": (517.11, 12.77),
    "elastic_L1.5": (618.78, 14.71),
    "elastic_L2": (704.11, 14.90),
    "elastic_L3": (815.40, 15.35),
}
GOLDEN_MIN = {200: (37.37, 5.64), 400: (159.92, 8.45), 800: (288.81, 9.64)}
# Per-stage breakdowns copied from shared/reference/elasticvit_models.json.
BREAKDOWN = json.load(
    open(os.path.join(os.path.dirname(__file__), "data", "published_flops_breakdown.json"))
)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_published_models(name):
    s = get_space("elasticvit")
    a = get_published_arch(name)
    mf, pm = GOLDEN[name]
    assert abs(flops.count_flops(s, a) - mf) <= 0.01
    assert abs(flops.count_params(s, a) / 1e6 - pm) <= 0.01
    bd = flops.flops_breakdown(s, a)
    for part, ref in BREAKDOWN[name].items():
        assert abs(bd[part] - ref) <= 0.006, (part, bd[part], ref)


@pytest.mark.parametrize("key", sorted(GOLDEN_MIN))
def test_training_min_archs(key):
    s = get_space("elasticvit")
    a = s.from_official(OFFICIAL_MIN_ARCH_ENCODINGS[key])
    mf, pm = GOLDEN_MIN[key]
    assert abs(flops.count_flops(s, a) - mf) <= 0.01
    assert abs(flops.count_params(s, a) / 1e6 - pm) <= 0.01


def test_global_min_and_max():
    s = get_space("elasticvit")
    assert abs(flops.count_flops(s, s.min_arch()) - 37.37) <= 0.01
    assert abs(flops.count_flops(s, s.max_arch()) - 3191.46) <= 0.01
    assert abs(flops.count_params(s, s.max_arch()) / 1e6 - 37.57) <= 0.01
    # The global min arch is the yaml's min_archs[200].
    assert s.min_arch() == s.from_official(OFFICIAL_MIN_ARCH_ENCODINGS[200])


def test_breakdown_sums_to_total_and_is_positive():
    s = get_space("demo")
    rng = np.random.default_rng(0)
    for _ in range(100):
        a = s.sample(rng)
        bd = flops.flops_breakdown(s, a)
        assert set(bd) == {"stem", "head"} | {f"stage{i}" for i in range(6)}
        assert all(v > 0 for v in bd.values())
        assert abs(sum(bd.values()) - flops.count_flops(s, a)) < 1e-9


def test_flops_monotone_in_each_dimension():
    s = get_space("elasticvit")
    a = s.min_arch()
    base = flops.count_flops(s, a)
    assert flops.count_flops(s, a.replace(resolution=160)) > base
    assert flops.count_flops(s, a.replace_stage(5, depth=2)) > base
    assert flops.count_flops(s, a.replace_stage(5, mlp_ratio=3)) > base
    assert flops.count_flops(s, a.replace_stage(5, v_scale=3)) > base
    assert flops.count_flops(s, a.replace_stage(0, expand_ratio=4)) > base
    assert flops.count_flops(s, a.replace_stage(0, kernel=5)) > base


def test_num_classes_changes_head_only():
    s = get_space("elasticvit")
    a = get_published_arch("elastic_S1")
    b1000 = flops.flops_breakdown(s, a)
    b10 = flops.flops_breakdown(s, a, num_classes=10)
    assert abs((b1000["head"] - b10["head"]) - 1984 * 990 / 1e6) < 1e-9
    assert all(b1000[k] == b10[k] for k in b1000 if k != "head")


def test_published_encodings_cover_all_nine():
    assert len(OFFICIAL_ENCODINGS) == 9


@pytest.mark.parametrize("space_name", ["tiny", "demo", "elasticvit"])
def test_encode_decode_and_vectorised_flops_exact(space_name):
    space = get_space(space_name)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(200)] + [space.min_arch(), space.max_arch()]
    enc = blocks.encode(space, archs)
    assert enc.shape == (len(archs), blocks.num_columns(space))
    assert [blocks.decode(space, r) for r in enc] == archs
    got = flops.count_flops_encoded(space, enc)
    expected = np.array([flops.count_flops(space, a) for a in archs])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_vectorised_flops_published_models():
    space = get_space("elasticvit")
    # docs/method.md#flops reference values (repo formula, MFLOPs)
    ref = {"elastic_T1": 62.92, "elastic_S1": 217.64, "elastic_M": 415.58, "elastic_L3": 815.40}
    enc = blocks.encode(space, [get_published_arch(n) for n in ref])
    np.testing.assert_allclose(
        flops.count_flops_encoded(space, enc), list(ref.values()), atol=0.006
    )


@pytest.mark.parametrize("space_name", ["tiny", "elasticvit"])
def test_stratified_sample_fills_every_flops_band(space_name):
    """Equal counts per equal-width FLOPs band, also the top band of the real space that
    uniform draws almost never reach; distinct, valid, seeded, excluding given keys."""
    space = get_space(space_name)
    lo, hi = flops.count_flops(space, space.min_arch()), flops.count_flops(space, space.max_arch())
    edges = np.linspace(lo, hi, 5)
    archs, bands = flops.stratified_sample(space, 10, seed=7, strata=4)
    assert len(archs) == 10 and bands == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert len({a.key() for a in archs}) == 10
    for a, b in zip(archs, bands):
        assert space.contains(a)
        assert edges[b] <= flops.count_flops(space, a) <= edges[b + 1]
    again, _ = flops.stratified_sample(space, 10, seed=7, strata=4)
    assert [a.key() for a in again] == [a.key() for a in archs]
    other, _ = flops.stratified_sample(space, 10, seed=7, strata=4, exclude=[archs[0].key()])
    assert archs[0].key() not in {a.key() for a in other}
    upper, ub = flops.stratified_sample(space, 5, seed=7, strata=4, bands=(3, 1))
    assert ub == [1, 1, 1, 3, 3]
    for a, b in zip(upper, ub):
        assert edges[b] <= flops.count_flops(space, a) <= edges[b + 1]
    with pytest.raises(ValueError, match=r"bands=\(4,\): expected indices in \[0, 4\)"):
        flops.stratified_sample(space, 5, seed=7, strata=4, bands=(4,))

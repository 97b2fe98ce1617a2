"""Tests for elasticvit_tf.space: presets, validation, sampling."""

import dataclasses

import numpy as np
import pytest

from elasticvit_tf import flops
from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.space import SearchSpace, StageSpace, get_space, space_names


@pytest.mark.parametrize("name", ["elasticvit", "demo", "tiny"])
def test_random_archs_valid_and_roundtrip(name):
    space = get_space(name)
    rng = np.random.default_rng(0)
    keys = {}
    for _ in range(1000):
        a = space.sample(rng)
        space.validate_arch(a)
        assert list(a.widths) == sorted(a.widths)
        assert a.stem.width <= a.widths[0]
        assert ArchConfig.from_json(a.to_json()) == a
        assert space.from_official(space.to_official(a)) == a
        keys.setdefault(a.key(), set()).add(a)
    # key() is injective: one arch per key, and distinct archs have distinct keys.
    assert all(len(v) == 1 for v in keys.values())


def test_elasticvit_space_matches_spec():
    s = get_space("elasticvit")
    assert s.resolutions == (128, 160, 176, 192, 224, 256)
    assert s.stem.widths == (16, 24) and s.stem.depths == (1, 2) and s.stem.kernels == (3, 5)
    assert s.stage_kinds == ("C", "C", "T", "T", "T", "T")
    assert [st.downsample for st in s.stages] == [True, True, True, False, True, True]
    assert [st.se for st in s.stages[:2]] == [False, True]
    assert s.stages[0].widths == (16, 24, 32) and s.stages[1].widths == (16, 24, 32, 40, 48)
    assert s.stages[2].widths == (48, 64, 80, 96)
    assert s.stages[3].widths == (80, 96, 112, 128, 144, 160)
    assert len(s.stages[4].widths) == 10 and len(s.stages[5].widths) == 11
    assert [st.max_depth for st in s.stages] == [5, 6, 5, 6, 6, 6]
    assert s.stages[0].expand_ratios == (3, 4, 5, 6) and s.stages[2].mlp_ratios == (2, 3, 4, 5)
    assert s.stages[5].v_scales == (2, 3, 4)
    assert (s.head_dim, s.head_mul, s.head_width, s.num_classes) == (16, 6, 1984, 1000)
    assert s.flops_levels == (100, 200, 300, 400, 500, 700, 900, 1200)
    # Feature sides of spec table 1.1.
    assert s.feature_sides(160) == (80, 40, 20, 10, 10, 5, 3)
    assert s.feature_sides(176) == (88, 44, 22, 11, 11, 6, 3)
    assert s.feature_sides(224) == (112, 56, 28, 14, 14, 7, 4)
    # Relative-position table sizes R (docs/method.md#transformer-layer).
    assert [s.max_feature_side(i) for i in range(2, 6)] == [16, 16, 8, 4]


def test_select_min_arch_mapping_matches_spec_table():
    s = get_space("elasticvit")
    got = [round(flops.count_flops(s, s.select_min_arch(f)), 2) for f in s.flops_levels]
    # docs/method.md#level-bins-and-min-subnets: levels 100..1200 -> [200] [200] [400] [400] [800]
    # [800] [800] [800]
    assert got == [37.37, 37.37, 159.92, 159.92, 288.81, 288.81, 288.81, 288.81]


@pytest.mark.parametrize("name", ["demo", "tiny"])
def test_small_presets_levels_and_min_archs(name):
    s = get_space(name)
    assert len(s.flops_levels) >= 4
    lo, hi = flops.count_flops(s, s.min_arch()), flops.count_flops(s, s.max_arch())
    assert lo < s.flops_levels[0] and s.flops_levels[-1] + 2 * s.level_bound < hi
    for level in s.flops_levels:
        m = s.select_min_arch(level)
        assert s.contains(m)
        assert flops.count_flops(s, m) <= level  # the min arch lies below its levels' bins
    # Every stage is elastic in every dimension the official space has.
    for st in s.stages:
        assert len(st.depths) >= 2
        knobs = (
            (st.mlp_ratios, st.v_scales) if st.is_transformer else (st.expand_ratios, st.kernels)
        )
        assert all(len(k) >= 2 for k in knobs)
    assert s.feature_sides(min(s.resolutions))[-1] >= 2


def test_demo_space_fits_fashion_mnist():
    s = get_space("demo")
    assert 28 in s.resolutions
    assert s.num_classes == 10


def test_presets_and_fingerprints_distinct():
    assert set(space_names()) == {"elasticvit", "demo", "tiny"}
    fps = {get_space(n).fingerprint() for n in space_names()}
    assert len(fps) == 3
    s = get_space("tiny")
    assert SearchSpace.from_dict(s.to_dict()) == s
    assert SearchSpace.from_dict(s.to_dict()).fingerprint() == s.fingerprint()
    changed = dataclasses.replace(s, head_width=64)
    assert changed.fingerprint() != s.fingerprint()


def test_restricted_sampling_dominates_min_arch():
    s = get_space("elasticvit")
    m = s.select_min_arch(500)
    rng = np.random.default_rng(1)
    for _ in range(300):
        a = s.sample(rng, min_arch=m)
        assert a.resolution >= m.resolution and a.stem.depth >= m.stem.depth
        for sa, sm in zip(a.stages, m.stages):
            assert sa.width >= sm.width and sa.depth >= sm.depth
            if sa.is_transformer:
                assert sa.mlp_ratio >= sm.mlp_ratio and sa.v_scale >= sm.v_scale
            else:
                assert sa.expand_ratio >= sm.expand_ratio


def test_sampling_is_reproducible():
    s = get_space("demo")
    a = [s.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


# ------------------------------------------------------------------------------ bad input
def _tiny_row(**kw):
    base = dict(
        kind="T",
        widths=(16, 32),
        depths=(1, 2),
        downsample=False,
        mlp_ratios=(1, 2),
        v_scales=(1, 2),
    )
    base.update(kw)
    return StageSpace(**base)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(resolutions=(24, 16)),
            "resolutions=(24, 16) is invalid; expected strictly increasing",
        ),
        (dict(resolutions=()), "resolutions=() is invalid"),
        (dict(head_dim=0), "head_dim=0 is invalid; expected a positive integer"),
        (dict(flops_levels=(2.0, 1.0)), "flops_levels"),
        (dict(level_bound=0), "level_bound=0 is invalid"),
    ],
)
def test_space_validation_errors(change, message):
    s = get_space("tiny")
    with pytest.raises(
        ValueError, match="space 'tiny': " + message.replace("(", r"\(").replace(")", r"\)")
    ):
        dataclasses.replace(s, **change)


def test_space_rejects_bad_stage_rows():
    s = get_space("tiny")
    stages = list(s.stages)
    stages[3] = _tiny_row(widths=(16, 24))
    with pytest.raises(
        ValueError,
        match=r"stages\[3\].widths=\(16, 24\) is invalid; expected multiples of head_dim=16",
    ):
        dataclasses.replace(s, stages=tuple(stages))
    stages = list(s.stages)
    stages[5] = _tiny_row(widths=(16,))
    with pytest.raises(
        ValueError,
        match=r"stages\[5\].widths=\(16,\) is invalid; expected a max width >= the previous",
    ):
        dataclasses.replace(s, stages=tuple(stages))
    stages = list(s.stages)
    stages[2] = _tiny_row(kind="X")
    with pytest.raises(
        ValueError, match=r"stages\[2\].kind='X' is invalid; expected 'C' \(MBConv\) or 'T'"
    ):
        dataclasses.replace(s, stages=tuple(stages))
    stages = list(s.stages)
    stages[1] = dataclasses.replace(stages[1], kernels=(3, 4))
    with pytest.raises(ValueError, match=r"stages\[1\].kernels=\(3, 4\) is invalid; expected odd"):
        dataclasses.replace(s, stages=tuple(stages))


def test_space_rejects_too_small_last_stage():
    s = get_space("tiny")
    with pytest.raises(ValueError, match="at least 2x2 tokens in the last stage"):
        dataclasses.replace(s, resolutions=(8, 16))


def test_get_space_unknown_name():
    with pytest.raises(
        ValueError,
        match=r"unknown space 'imagenet'; expected one of \['demo', 'elasticvit', 'tiny'\]",
    ):
        get_space("imagenet")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda a: a.replace(resolution=100),
            r"arch.resolution=100 is not in space 'elasticvit': expected one of \[128, 160",
        ),
        (
            lambda a: a.replace_stage(0, width=20),
            r"arch.stages\[0\].width=20 is not in space 'elasticvit': expected one of \[16, 24, 32\]",
        ),
        (
            lambda a: a.replace_stage(2, depth=9),
            r"arch.stages\[2\].depth=9 is not in space 'elasticvit': expected one of \[1, 2, 3, 4, 5\]",
        ),
        (
            lambda a: a.replace_stage(1, expand_ratio=7),
            r"arch.stages\[1\].expand_ratio=7 is not in space",
        ),
        (lambda a: a.replace_stage(4, v_scale=5), r"arch.stages\[4\].v_scale=5 is not in space"),
        (
            lambda a: a.replace_stage(3, width=80).replace_stage(2, width=96),
            r"arch.stages\[3\].width=80 is smaller than the previous width 96: widths must be non-decreasing",
        ),
        (
            lambda a: a.replace(stem=a.stem.__class__(16, 3, 3)),
            r"arch.stem.depth=3 is not in space 'elasticvit': expected one of \[1, 2\]",
        ),
        (lambda a: a.replace(stages=a.stages[:5]), "arch has 5 stages; space 'elasticvit' has 6"),
    ],
)
def test_arch_validation_errors(mutate, message):
    s = get_space("elasticvit")
    with pytest.raises(ValueError, match=message):
        s.validate_arch(mutate(s.min_arch()))
    assert not s.contains(mutate(s.min_arch()))

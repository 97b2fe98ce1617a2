"""Tests for elasticvit_tf.sampling.level_tables: vectorised FLOPs, proposal, tables and their cache."""

import dataclasses
import os

import numpy as np
import pytest

from elasticvit_tf import blocks
from elasticvit_tf.flops import count_flops, count_flops_encoded, macs_encoded
from elasticvit_tf.sampling import level_tables as ft
from elasticvit_tf.space import get_published_arch, get_space


def _dominates(a, m):
    if a.resolution < m.resolution or a.stem.width < m.stem.width or a.stem.depth < m.stem.depth:
        return False
    for s, ms in zip(a.stages, m.stages):
        if s.width < ms.width or s.depth < ms.depth:
            return False
        if s.is_transformer and (s.mlp_ratio < ms.mlp_ratio or s.v_scale < ms.v_scale):
            return False
        if not s.is_transformer and s.expand_ratio < ms.expand_ratio:
            return False
    return True


@pytest.mark.parametrize("space_name", ["tiny", "elasticvit"])
def test_bin_sampler_flops_and_distribution_match_space_sample(space_name):
    space = get_space(space_name)
    m = space.select_min_arch(space.flops_levels[-1])
    bs = ft.BinSampler(space, m)
    rng = np.random.default_rng(1)
    idx, macs = bs.draw(rng, 20000)
    enc = bs.to_encoded(idx)
    np.testing.assert_array_equal(macs, macs_encoded(space, enc))
    ref = blocks.encode(space, [space.sample(rng, min_arch=m) for _ in range(4000)])
    vec = ft.sample_encoded(space, rng, 20000, m)
    for a in (blocks.decode(space, r) for r in enc[:300]):
        space.validate_arch(a)
        assert _dominates(a, m)
    # every column's marginal matches space.sample (and the plain vectorised reference)
    for col in range(enc.shape[1]):
        values = np.union1d(ref[:, col], enc[:, col])
        f_fast = np.array([(enc[:, col] == v).mean() for v in values])
        f_ref = np.array([(ref[:, col] == v).mean() for v in values])
        f_vec = np.array([(vec[:, col] == v).mean() for v in values])
        assert np.abs(f_fast - f_ref).max() < 0.04, col
        assert np.abs(f_fast - f_vec).max() < 0.02, col
        assert set(np.unique(enc[:, col])) == set(np.unique(ref[:, col])), col


def test_bin_sampler_sample_in_bin_and_empty_bin():
    space = get_space("demo")
    level = space.flops_levels[2]
    bs = ft.BinSampler(space, space.select_min_arch(level))
    lo, hi = space.level_bin(level)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = bs.sample_in_bin(rng, lo, hi)
        assert lo <= count_flops(space, a) <= hi
    with pytest.raises(ValueError, match="no arch with 500 <= MFLOPs <= 501"):
        bs.sample_in_bin(rng, 500.0, 501.0, max_draws=10000)


@pytest.mark.parametrize("space_name", ["tiny", "demo"])
def test_build_table_in_bin_distinct_dominating(space_name):
    space = get_space(space_name)
    for level in space.flops_levels:
        t = ft.build_table(space, level, size=300, seed=0)
        lo, hi = space.level_bin(level)
        assert len(t) == 300 and t.complete and t.draws >= 300
        assert (t.lo, t.hi) == (lo, hi)
        assert len({r.tobytes() for r in t.archs}) == len(t)
        f = count_flops_encoded(space, t.archs)
        assert f.min() >= lo and f.max() <= hi
        m = space.select_min_arch(level)
        for r in t.archs[:50]:
            a = blocks.decode(space, r)
            space.validate_arch(a)
            assert _dominates(a, m)


def test_build_table_deterministic_and_seeded():
    space = get_space("tiny")
    a = ft.build_table(space, 1.2, size=100, seed=3)
    b = ft.build_table(space, 1.2, size=100, seed=3)
    c = ft.build_table(space, 1.2, size=100, seed=4)
    np.testing.assert_array_equal(a.archs, b.archs)
    assert not np.array_equal(a.archs, c.archs)


def test_build_table_small_bin_incomplete_and_empty_bin():
    space = get_space("tiny")
    t = ft.build_table(space, 0.5, size=100000, seed=0, max_draws=200000)
    assert not t.complete and 0 < len(t) < 100000
    with pytest.raises(ValueError, match="empty"):
        ft.build_table(space, 50.0, size=10, max_draws=50000)
    with pytest.raises(ValueError, match="size"):
        ft.build_table(space, 0.5, size=0)


def test_elasticvit_rare_level_table_fast():
    space = get_space("elasticvit")
    t = ft.build_table(space, 500, size=40, seed=0)  # ~0.03 % acceptance
    f = count_flops_encoded(space, t.archs)
    assert len(t) == 40 and f.min() >= 500 and f.max() <= 520
    assert 1e-4 < t.acceptance < 1e-3


# ---------------------------------------------------------------------------------- cache
def test_cache_hit_returns_same_archs(tmp_path, monkeypatch):
    space = get_space("tiny")
    t1 = ft.get_table(space, 1.2, size=64, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def no_build(*args, **kwargs):
        raise AssertionError("cache miss: build_table called")

    monkeypatch.setattr(ft, "build_table", no_build)
    t2 = ft.get_table(space, 1.2, size=64, cache_dir=tmp_path)
    np.testing.assert_array_equal(t1.archs, t2.archs)
    assert t2.metadata() == t1.metadata()
    assert ft.get_table(space, 0.5, size=64, cache_dir=tmp_path, build=False) is None


def test_cache_key_fingerprint_level_size(tmp_path):
    space = get_space("tiny")
    other = dataclasses.replace(space, head_width=40)  # another space definition
    assert other.fingerprint() != space.fingerprint()
    p = ft.table_path(space, 1.2, 64, cache_dir=tmp_path)
    assert ft.table_path(other, 1.2, 64, cache_dir=tmp_path) != p
    assert ft.table_path(space, 1.6, 64, cache_dir=tmp_path) != p
    assert ft.table_path(space, 1.2, 65, cache_dir=tmp_path) != p
    assert ft.table_path(space, 1.2, 64, seed=1, cache_dir=tmp_path) != p
    ft.get_table(space, 1.2, 64, cache_dir=tmp_path)
    t_other = ft.get_table(other, 1.2, 64, cache_dir=tmp_path)
    assert t_other.fingerprint == other.fingerprint()
    assert len(list(tmp_path.glob("*.npz"))) == 2
    with pytest.raises(ValueError, match="fingerprint"):
        ft.load_table(p, other)


def test_cache_corrupt_file_rebuilt_and_default_dir(tmp_path, monkeypatch):
    space = get_space("tiny")
    p = ft.table_path(space, 1.2, 32, cache_dir=tmp_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"not a zip")
    t = ft.get_table(space, 1.2, 32, cache_dir=tmp_path)
    assert len(t) == 32
    np.testing.assert_array_equal(ft.load_table(p, space).archs, t.archs)
    monkeypatch.setenv(ft.CACHE_ENV, str(tmp_path / "env"))
    assert ft.default_cache_dir() == tmp_path / "env" / "flops_tables"
    ft.get_table(space, 0.5, 16)
    assert os.listdir(tmp_path / "env" / "flops_tables")

"""Tests of the NumPy reference of the official network (tests/numpy_reference.py).

Hand-computed small cases for every quirk of docs/method.md#blocks,
docs/method.md#departures-from-the-official-code, the official tensor table, and (when torch is
installed) the primitives against PyTorch's own operators.
"""

import os

import numpy as np
import numpy_reference as nr
import pytest

from elasticvit_tf.space import get_space

TSV = os.path.join(os.path.dirname(__file__), "data", "official_supernet_state_dict.tsv")


def _read_tsv():
    rows = []
    with open(TSV) as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header == ["name", "shape", "dtype"]
        for line in f:
            name, shape, dtype = line.rstrip("\n").split("\t")
            dims = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
            rows.append((name, dims, dtype))
    return rows


# ---------------------------------------------------------------------------- layout
def test_layout_equals_official_table():
    rows = _read_tsv()
    assert len(rows) == 690
    assert nr.official_layout(get_space("elasticvit")) == rows


def test_random_state_dict_matches_layout_and_true_indices():
    sp = get_space("elasticvit")
    sd = nr.random_state_dict(sp, seed=3)
    layout = nr.official_layout(sp)
    assert list(sd) == [n for n, _, _ in layout]
    for name, shape, dtype in layout:
        assert sd[name].shape == shape, name
        assert sd[name].dtype == np.dtype(dtype), name
    idx = sd["feature_exactor.5.layers.0.relative_position_index"]
    np.testing.assert_array_equal(idx, nr.relative_position_index(4, 4))
    # non-trivial BN statistics
    v = sd["feature_exactor.1.layers.0.0.dw_bn.running_var"]
    m = sd["feature_exactor.1.layers.0.0.dw_bn.running_mean"]
    assert v.std() > 0.1 and np.abs(m).max() > 0.1 and v.min() >= 0.5


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_small_space_layout_follows_naming_scheme(name):
    sp = get_space(name)
    shapes = {n: s for n, s, _ in nr.official_layout(sp)}
    c5 = sp.stages[-1].max_width
    t0 = sp.stages[2]
    assert shapes["first_conv.weight"] == (max(sp.stem.widths), 3, 3, 3)
    assert shapes["feature_exactor.2.layers.0.qkv.weight"] == (
        (2 + max(t0.v_scales)) * t0.max_width,
        t0.max_width,
    )
    r = sp.max_feature_side(2)
    assert shapes["feature_exactor.2.layers.0.attention_bias"] == (
        (2 * r - 1) ** 2,
        t0.max_width // 16,
    )
    assert shapes["pre_head_0.weight"] == (sp.head_mul * c5, c5)
    assert shapes["classifer.weight"] == (sp.num_classes, sp.head_width)
    n_blocks = sum(1 for n in shapes if n.endswith("reduction.pw_conv.weight"))
    assert n_blocks == 4  # one transition MBConv per transformer stage
    assert f"feature_exactor.3.layers.{2 * sp.stages[3].max_depth - 1}.fc2.bias" in shapes


# ------------------------------------------------------------------------ primitives
def test_token_layer_norm_is_over_tokens_and_channels():
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, N=2, C=2): mean 2.5, var 1.25
    y = nr.token_layer_norm(x, np.array([1.0, 2.0, 9.0]), np.array([0.0, 1.0, 9.0]))
    s = np.sqrt(1.25 + 1e-5)
    want = np.array([[[-1.5 / s, 2 * -0.5 / s + 1], [0.5 / s, 2 * 1.5 / s + 1]]])
    np.testing.assert_allclose(y, want, rtol=1e-12)
    # a per-token LayerNorm would give +-1 in every row: the quirk really differs
    assert abs(y[0, 0, 0] + 1.0) > 0.3


def test_qkv_super_rows_literal():
    np.testing.assert_array_equal(nr.qkv_super_rows(2, 3, 2), [0, 1, 3, 4, 6, 7, 8, 9])
    rows = nr.qkv_super_rows(32, 48, 1)
    assert list(rows[:32]) == list(range(32))
    assert list(rows[32:64]) == list(range(48, 80))
    assert list(rows[64:]) == list(range(96, 128))


def test_attention_head_major_split_single_token():
    # C=32 (2 heads of 16), Cmax=48, v=1 (dv=16), one token: softmax is 1, so the output is
    # hswish(dw_centre * v) projected. z = beta = e0, W_qkv[r, 0] = r / 100, so v of head h
    # reads super-rows: head 0 -> positions 32..47 -> rows 48..63 (the K block!),
    # head 1 -> positions 80..95 -> rows 112..127 (V block).
    c, cm, vmax = 32, 48, 4
    sd = {
        "p.norm1.weight": np.zeros(cm),
        "p.norm1.bias": np.eye(cm)[0],
        "p.qkv.weight": np.zeros(((2 + vmax) * cm, cm)),
        "p.dw_v_conv.weight": np.ones((vmax * cm, 1, 3, 3)) * 7.0,
        "p.proj.weight": np.eye(cm, vmax * cm),
        "p.proj.bias": np.zeros(cm),
        "p.attention_bias": np.zeros((1, cm // 16)),
    }
    sd["p.qkv.weight"][:, 0] = np.arange((2 + vmax) * cm) / 100.0
    sd["p.dw_v_conv.weight"][:, 0, 1, 1] = 1.0  # centre tap only matters for a 1x1 map
    out = nr.attention(np.zeros((1, 1, c)), 1, sd, "p.", c, cm, 1, 1, 16)
    rows = np.concatenate([np.arange(48, 64), np.arange(112, 128)]) / 100.0
    np.testing.assert_allclose(out[0, 0], nr.hardswish(rows), rtol=1e-12)


def test_avg_pool_shortcut_odd_and_even():
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    y = nr.avg_pool_shortcut(x)[0, :, :, 0]
    np.testing.assert_allclose(y, [[1 / 4, (2 + 3) / 4], [(4 + 7) / 4, (5 + 6 + 8 + 9) / 4]])
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    y = nr.avg_pool_shortcut(x)[0, :, :, 0]
    np.testing.assert_allclose(y, [[2.5, 4.5], [10.5, 12.5]])


def test_relative_position_index_literal_and_crop():
    np.testing.assert_array_equal(
        nr.relative_position_index(2, 2),
        [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]],
    )
    # side 2 inside an R=4 table: offsets by R-1 = 3, rows of 2R-1 = 7
    idx = nr.relative_position_index(4, 2)
    np.testing.assert_array_equal(idx[0], [24, 23, 17, 16])
    assert set(np.diag(idx)) == {24}  # centre of the 7x7 table


def test_bicubic_matrix_literals():
    np.testing.assert_allclose(nr.torch_bicubic_matrix(5, 5), np.eye(5), atol=1e-15)
    m = nr.torch_bicubic_matrix(4, 2)
    np.testing.assert_allclose(m[0], [0.5, 0.59375, -0.09375, 0.0])
    np.testing.assert_allclose(m.sum(axis=1), 1.0)


def test_centre_crop_and_depthwise_padding():
    w = np.arange(25.0).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(
        nr.centre_crop_kernel(w, 3)[0, 0], [[6, 7, 8], [11, 12, 13], [16, 17, 18]]
    )
    x = np.ones((1, 4, 4, 1))
    y = nr.depthwise_conv(x, np.ones((1, 1, 3, 3)), stride=2)[0, :, :, 0]
    # symmetric padding 1, stride 2 on a 4x4 map: windows start at -1 and 1
    np.testing.assert_array_equal(y, [[4, 6], [6, 9]])


# ---------------------------------------------------------------------- whole network
@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_forward_shapes_and_input_sensitivity(name):
    sp = get_space(name)
    sd = nr.random_state_dict(sp, seed=0)
    rng = np.random.default_rng(0)
    arch = sp.sample(rng)
    x = rng.normal(size=(2, arch.resolution, arch.resolution, 3))
    y = nr.forward(sd, sp, arch, x)
    assert y.shape == (2, sp.num_classes)
    assert np.all(np.isfinite(y))
    assert np.abs(y[0] - y[1]).max() > 1e-3
    # another arch of the same weights gives other logits
    other = sp.max_arch()
    assert np.abs(nr.forward(sd, sp, other, x[:, :8, :8]) - y).max() > 1e-3


def test_forward_resizes_to_arch_resolution():
    sp = get_space("tiny")
    sd = nr.random_state_dict(sp, seed=1)
    arch = sp.min_arch()
    x = np.random.default_rng(0).normal(size=(1, 20, 20, 3))
    y = nr.forward(sd, sp, arch, x)
    y_pre = nr.forward(sd, sp, arch, nr.torch_bicubic_resize(x, arch.resolution))
    np.testing.assert_allclose(y, y_pre, rtol=1e-12)
    assert np.abs(nr.forward(sd, sp, arch, x[:, 2:18, 2:18]) - y).max() > 1e-4


# -------------------------------------------------------------- primitives vs PyTorch
@pytest.mark.slow
def test_primitives_match_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def nhwc(t):
        return t.numpy().transpose(0, 2, 3, 1)

    for src, dst in ((224, 160), (224, 256), (13, 7), (7, 13)):
        x = rng.normal(size=(2, src, src, 3))
        want = nhwc(F.interpolate(nchw(x), size=(dst, dst), mode="bicubic", align_corners=False))
        np.testing.assert_allclose(nr.torch_bicubic_resize(x, dst), want, atol=1e-12)
    for side in (5, 6, 7, 11):
        x = rng.normal(size=(2, side, side, 4))
        pad = side % 2
        want = nhwc(F.avg_pool2d(nchw(x), 2, 2, padding=pad, count_include_pad=True))
        np.testing.assert_allclose(nr.avg_pool_shortcut(x), want, atol=1e-12)
        for k, s in ((3, 1), (3, 2), (5, 2)):
            w = rng.normal(size=(4, 1, k, k))
            want = nhwc(F.conv2d(nchw(x), torch.from_numpy(w), stride=s, padding=k // 2, groups=4))
            np.testing.assert_allclose(nr.depthwise_conv(x, w, s), want, atol=1e-12)
            w = rng.normal(size=(6, 4, k, k))
            want = nhwc(F.conv2d(nchw(x), torch.from_numpy(w), stride=s, padding=k // 2))
            np.testing.assert_allclose(nr.conv2d(x, w, s), want, atol=1e-12)
    t = rng.normal(size=(2, 9, 5))
    g, b = rng.normal(size=5), rng.normal(size=5)
    want = F.layer_norm(torch.from_numpy(t), (9, 5), eps=1e-5).numpy() * g + b
    np.testing.assert_allclose(nr.token_layer_norm(t, g, b), want, atol=1e-10)
    x = torch.from_numpy(rng.normal(size=100) * 4)
    np.testing.assert_allclose(nr.hardswish(x.numpy()), F.hardswish(x).numpy(), atol=1e-12)
    np.testing.assert_allclose(nr.hardsigmoid(x.numpy()), F.hardsigmoid(x).numpy(), atol=1e-12)

"""Tests of the official-checkpoint converter (elasticvit_tf/convert_lib.py, binary convert_main.py).

The central check: the supernet loaded through the converter with random official-shaped
tensors equals the independent NumPy reference (tests/numpy_reference.py) of the official
network, at every resolution (odd feature sizes included) and through the in-model resize.
"""

import os
import subprocess
import sys

import numpy as np
import numpy_reference as nr
import pytest

from elasticvit_tf import convert_lib as co
from elasticvit_tf import model_dir as md
from elasticvit_tf.space import get_space
from elasticvit_tf.supernet import ElasticSupernet

TSV = os.path.join(os.path.dirname(__file__), "data", "official_supernet_state_dict.tsv")
TOL = 1e-5


def _read_tsv():
    with open(TSV) as f:
        f.readline()
        rows = [line.rstrip("\n").split("\t") for line in f]
    return [(n, tuple(int(d) for d in s.strip("[]").split(",") if d.strip())) for n, s, _ in rows]


def _net(space_name, num_classes=None):
    sp = get_space(space_name)
    n_cls = sp.num_classes if num_classes is None else num_classes
    return ElasticSupernet(sp, n_cls, resize_method="torch_bicubic")


@pytest.fixture(scope="module")
def tiny_loaded():
    sp = get_space("tiny")
    sd = nr.random_state_dict(sp, seed=11)
    net = _net("tiny")
    unused = co.assign_official_weights(net, sd)
    return net, sd, unused


def _np(v):
    return np.asarray(v.numpy())


def _expected_keras(name, value):
    """The test's own statement of the layout change (docs/method.md#super-weight-layouts), keyed on
    official names."""
    if value.ndim == 4 and value.shape[1] == 1 and ("dw_conv" in name or "dw_v_conv" in name):
        return value.transpose(2, 3, 0, 1)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and not name.endswith("attention_bias"):
        return value.T
    return value


# --------------------------------------------------------------------------- mapping
@pytest.mark.slow
def test_mapping_equals_official_table():
    mapping = co.official_mapping(_net("elasticvit"))
    assert [(m.name, m.shape) for m in mapping] == _read_tsv()
    unused = {m.name for m in mapping if not m.used}
    assert len(mapping) == 690 and len(unused) == 85
    want_unused = {n for n, _ in _read_tsv() if n.endswith("num_batches_tracked")}
    want_unused |= {n for n, _ in _read_tsv() if n.endswith("relative_position_index")}
    want_unused |= {f"conv_stem.layers.{j}.0.shortcut_conv.weight" for j in range(2)}
    want_unused |= {f"feature_exactor.0.layers.{j}.0.shortcut_conv.weight" for j in range(1, 5)}
    want_unused |= {f"feature_exactor.1.layers.{j}.0.shortcut_conv.weight" for j in range(1, 6)}
    assert unused == want_unused


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_mapping_equals_reference_layout(name):
    mapping = co.official_mapping(_net(name))
    assert [(m.name, m.shape) for m in mapping] == [
        (n, s) for n, s, _ in nr.official_layout(get_space(name))
    ]


def test_every_tensor_lands_in_its_slice(tiny_loaded):
    net, sd, unused = tiny_loaded
    mapping = co.official_mapping(net)
    seen = {}
    for m in mapping:
        if not m.used:
            continue
        np.testing.assert_array_equal(_np(m.variable), _expected_keras(m.name, sd[m.name]), m.name)
        seen.setdefault(id(m.variable), []).append(m.name)
    assert all(len(v) == 1 for v in seen.values())
    arch_ids = {id(v) for v in net.arch_variables}
    every = [v for v in net.weights if id(v) not in arch_ids]
    assert {id(v) for v in every} == set(seen), "some supernet variable got no official tensor"
    # spot checks written out by hand
    sp = net.space
    st = sp.stages[3]
    cm, vmax = st.max_width, max(st.v_scales)
    blk = net.stages[3][0]
    qkv = sd["feature_exactor.3.layers.0.qkv.weight"]
    assert qkv.shape == ((2 + vmax) * cm, cm)
    np.testing.assert_array_equal(_np(blk.qkv.kernel)[:, cm + 5], qkv[cm + 5])  # a K super-row
    np.testing.assert_array_equal(
        _np(blk.ln2.gamma), sd["feature_exactor.3.layers.1.norm1.weight"]
    )  # FFN norm is the odd layer's norm1
    np.testing.assert_array_equal(
        _np(net.stem_blocks[1].pwl_bn.moving_variance),
        sd["conv_stem.layers.1.0.pwl_bn.running_var"],
    )
    np.testing.assert_array_equal(
        _np(net.first_conv.conv.kernel)[1, 2, 0, 3], sd["first_conv.weight"][3, 0, 1, 2]
    )
    np.testing.assert_array_equal(
        _np(net.stages[1][0].dw.kernel)[0, 4, 7, 0],
        sd["feature_exactor.1.layers.0.0.dw_conv.weight"][7, 0, 0, 4],
    )
    assert "conv_stem.layers.0.0.shortcut_conv.weight" in unused


def test_bad_state_dict_names_every_key_and_assigns_nothing():
    net = _net("tiny")
    sp = net.space
    sd = nr.random_state_dict(sp, seed=2)
    before = _np(net.first_conv.conv.kernel).copy()
    del sd["feature_exactor.2.layers.1.fc1.bias"]
    sd["feature_exactor.0.layers.0.0.pw_conv.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    sd["feature_exactor.9.layers.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(co.ConversionError) as e:
        co.assign_official_weights(net, sd)
    msg = str(e.value)
    assert "missing 1 tensor(s): feature_exactor.2.layers.1.fc1.bias" in msg
    assert "unexpected 1 tensor(s): feature_exactor.9.layers.0.extra.weight" in msg
    assert "feature_exactor.0.layers.0.0.pw_conv.weight: got shape [3, 3, 1, 1]" in msg
    np.testing.assert_array_equal(_np(net.first_conv.conv.kernel), before)


def test_wrong_relative_index_and_nan_are_refused():
    net = _net("tiny")
    sd = nr.random_state_dict(net.space, seed=2)
    sd["feature_exactor.4.layers.0.relative_position_index"] = np.zeros_like(
        sd["feature_exactor.4.layers.0.relative_position_index"]
    )
    with pytest.raises(co.ConversionError, match="feature_exactor.4.layers.0.relative_position"):
        co.assign_official_weights(net, sd)
    sd = nr.random_state_dict(net.space, seed=2)
    sd["classifer.bias"][0] = np.nan
    with pytest.raises(co.ConversionError, match="classifer.bias: holds NaN"):
        co.assign_official_weights(net, sd)


def test_select_state_dict_variants():
    a = {"module.x": np.ones(2)}
    b = {"x": np.zeros(2)}
    sd, src = co.select_state_dict({"state_dict": a, "model_ema": b, "epoch": 3})
    assert src == "model_ema" and sd["x"][0] == 0
    sd, src = co.select_state_dict({"state_dict": a, "model_ema": b}, use_ema=False)
    assert src == "state_dict" and list(sd) == ["x"] and sd["x"][0] == 1
    sd, src = co.select_state_dict({"state_dict": a})  # no EMA: falls back
    assert src == "state_dict"
    sd, src = co.select_state_dict(a)
    assert src == "bare" and list(sd) == ["x"]
    with pytest.raises(co.ConversionError, match="no 'state_dict'"):
        co.select_state_dict({"model_ema": b}, use_ema=False)
    with pytest.raises(co.ConversionError, match="expected a dict"):
        co.select_state_dict([1, 2])
    with pytest.raises(co.ConversionError, match="x: given twice"):
        co.select_state_dict({"x": np.ones(1), "module.x": np.ones(1)})


# ------------------------------------------------------------------- vs NumPy reference
def _compare(net, sd, archs, input_side=None, batch=2, seed=0):
    worst = 0.0
    for i, arch in enumerate(archs):
        side = arch.resolution if input_side is None else input_side
        x = np.random.default_rng(seed + i).normal(size=(batch, side, side, 3)).astype(np.float32)
        net.set_arch(arch)
        got = net(x, training=False).numpy()
        want = nr.forward(sd, net.space, arch, x)
        err = float(np.abs(got - want).max())
        assert err <= TOL, f"{arch.key()} input {side}: max abs logit diff {err}"
        assert np.abs(want).max() > 0.1  # logits are not trivially small
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_supernet_matches_reference_small_spaces(name):
    sp = get_space(name)
    sd = nr.random_state_dict(sp, seed=5)
    net = _net(name)
    co.assign_official_weights(net, sd)
    rng = np.random.default_rng(7)
    archs = [sp.min_arch(), sp.max_arch()] + [sp.sample(rng) for _ in range(10)]
    _compare(net, sd, archs)
    # an input size that differs from every resolution: in-model PyTorch bicubic resize
    _compare(net, sd, archs[:4], input_side=max(sp.resolutions) + 6, batch=1)


@pytest.fixture(scope="module")
def elasticvit_loaded():
    sp = get_space("elasticvit")
    sd = nr.random_state_dict(sp, seed=5)
    net = _net("elasticvit")
    co.assign_official_weights(net, sd)
    return net, sd


@pytest.mark.slow
def test_supernet_matches_reference_elasticvit_odd_sizes(elasticvit_loaded):
    net, sd = elasticvit_loaded
    sp = net.space
    rng = np.random.default_rng(3)
    # r = 160, 176, 224 have odd feature sides (5, 11, 7) before a stride-2 shortcut
    archs = [sp.sample(rng).replace(resolution=r) for r in (160, 176, 224)]
    _compare(net, sd, archs, batch=2)


@pytest.mark.slow
def test_supernet_matches_reference_elasticvit_resized(elasticvit_loaded):
    net, sd = elasticvit_loaded
    sp = net.space
    rng = np.random.default_rng(4)
    archs = [sp.sample(rng).replace(resolution=r) for r in (128, 256)]
    _compare(net, sd, archs, input_side=224, batch=1, seed=10)  # resized from a 224 crop
    _compare(net, sd, [sp.max_arch()], input_side=200, batch=1, seed=20)


# --------------------------------------------------------------------- torch checkpoints
def _torch_sd(sd, prefix=""):
    torch = pytest.importorskip("torch")
    return {prefix + k: torch.tensor(v) for k, v in sd.items()}


@pytest.mark.slow
def test_torch_checkpoint_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    sp = get_space("tiny")
    live = nr.random_state_dict(sp, seed=1)
    ema = nr.random_state_dict(sp, seed=2)
    path = str(tmp_path / "ckpt.pth")
    torch.save(
        {"state_dict": _torch_sd(live, "module."), "model_ema": _torch_sd(ema), "epoch": 5}, path
    )
    out = str(tmp_path / "converted")
    report = co.convert_checkpoint(path, out, space="tiny")
    assert report.source == "model_ema" and report.num_tensors == len(ema)
    assert report.num_used + len(report.unused) == len(ema)
    net, config = md.load_supernet(out, space_name="tiny")
    assert config["num_classes"] == sp.num_classes
    assert config["supernet_kwargs"]["resize_method"] == "torch_bicubic"
    assert net.resize_method == "torch_bicubic"
    assert os.path.isfile(os.path.join(out, "conversion.json"))
    for m in co.official_mapping(net):
        if m.used:
            np.testing.assert_array_equal(
                _np(m.variable), _expected_keras(m.name, ema[m.name]), m.name
            )
    arch = sp.sample(np.random.default_rng(0))
    _compare(net, ema, [arch])
    co._verify_written(out, net)  # the converter's own post-write check passes ...
    net.head.fc.bias.assign(net.head.fc.bias + 1.0)
    with pytest.raises(RuntimeError, match="elastic_supernet/head/fc/bias"):
        co._verify_written(out, net)  # ... and would notice a weight the checkpoint lost

    out2 = str(tmp_path / "converted_live")
    co.convert_checkpoint(path, out2, space="tiny", use_ema=False)
    net2, _ = md.load_supernet(out2, space_name="tiny")
    np.testing.assert_array_equal(_np(net2.head.classifier.kernel), live["classifer.weight"].T)
    bare = str(tmp_path / "bare.pth")
    torch.save(_torch_sd(live), bare)
    report = co.convert_checkpoint(bare, str(tmp_path / "converted_bare"), space="tiny")
    assert report.source == "bare"


@pytest.mark.slow
@pytest.mark.parametrize("defect", ["missing", "shape", "extra", "not_a_checkpoint"])
def test_bad_torch_checkpoint_fails_and_writes_nothing(tmp_path, defect):
    torch = pytest.importorskip("torch")
    sp = get_space("tiny")
    sd = _torch_sd(nr.random_state_dict(sp, seed=1))
    key = "feature_exactor.3.layers.2.qkv.weight"
    if defect == "missing":
        del sd[key]
    elif defect == "shape":
        sd[key] = torch.zeros(3, 3)
    elif defect == "extra":
        key = "feature_exactor.3.layers.2.bogus"
        sd[key] = torch.zeros(1)
    path = str(tmp_path / "bad.pth")
    if defect == "not_a_checkpoint":
        with open(path, "w") as f:
            f.write("this is not a checkpoint\n")
        key = path
    else:
        torch.save({"state_dict": sd}, path)
    out = tmp_path / "out"
    with pytest.raises(co.ConversionError) as e:
        co.convert_checkpoint(path, str(out), space="tiny")
    assert key in str(e.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


@pytest.mark.slow
def test_convert_elasticvit_full_size(tmp_path, elasticvit_loaded):
    net, sd = elasticvit_loaded
    out = str(tmp_path / "official")
    report = co.convert_state_dict(sd, out)  # space elasticvit, classes from classifer.weight
    assert (report.num_tensors, report.num_used, len(report.unused)) == (690, 605, 85)
    assert report.num_classes == 1000
    loaded, config = md.load_supernet(out, space_name="elasticvit")
    assert config["converted_from"]["source"] == "bare"
    for a, b in zip(net.weights, loaded.weights):
        np.testing.assert_array_equal(_np(a), _np(b), a.path)


def test_existing_output_dir_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(co.ConversionError, match="already exists"):
        co.convert_state_dict({}, str(tmp_path / "out"), space="tiny")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


@pytest.mark.slow
def test_binary_exit_codes(tmp_path):
    torch = pytest.importorskip("torch")
    sp = get_space("tiny")
    sd = _torch_sd(nr.random_state_dict(sp, seed=1))
    good = str(tmp_path / "good.pth")
    torch.save({"state_dict": sd}, good)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "elasticvit_tf.convert_main", "--space=tiny"]

    def run(*args):
        return subprocess.run(
            cmd + list(args), capture_output=True, text=True, env=env, check=False
        )

    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--checkpoint={good}\n--model_dir={tmp_path / 'ok'}\n")
    r = run(f"--flagfile={flagfile}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "converted" in r.stdout and (tmp_path / "ok" / "config.json").is_file()
    r = run(f"--checkpoint={flagfile}", f"--model_dir={tmp_path / 'no'}")
    assert r.returncode == 2
    assert "flags.txt is not a PyTorch checkpoint" in r.stderr
    assert not (tmp_path / "no").exists()
    r = run(f"--model_dir={tmp_path / 'no'}")
    assert r.returncode == 2 and "--checkpoint is required" in r.stderr
    r = run("--num_classes=ten")
    assert r.returncode == 2 and "num_classes" in r.stderr

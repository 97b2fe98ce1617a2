"""SubnetEvaluator and EvalCache (search/evaluator.py)."""

import json

import numpy as np
import pytest

from elasticvit_tf.search.evaluator import EvalCache, SubnetEvaluator, archs_in
from elasticvit_tf.space import get_space


def test_cache_per_writer_files_and_meta(tmp_path):
    a = EvalCache(str(tmp_path), "tuner0", meta={"ckpt": "x", "batches": (1, 2)})
    a.put("k1", {"top1": 0.5})
    b = EvalCache(str(tmp_path), "tuner1", meta={"ckpt": "x", "batches": [1, 2]})
    assert b.get("k1") == {"top1": 0.5}  # reads every writer's file
    b.put("k2", {"top1": 0.25})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["eval_cache_tuner0.json", "eval_cache_tuner1.json"]
    assert json.loads((tmp_path / "eval_cache_tuner1.json").read_text())["results"] == {
        "k2": {"top1": 0.25}
    }
    again = EvalCache(str(tmp_path), "tuner0", meta={"ckpt": "x", "batches": [1, 2]})
    assert len(again) == 2 and "k2" in again
    other = EvalCache(str(tmp_path), "tuner0", meta={"ckpt": "y"})  # other checkpoint
    assert len(other) == 0
    (tmp_path / "eval_cache_broken.json").write_text("{not json")
    assert len(EvalCache(str(tmp_path), "tuner2", meta={"ckpt": "x", "batches": [1, 2]})) == 2


def test_archs_in_finds_nested_bank_archs():
    space = get_space("tiny")
    rng = np.random.default_rng(0)
    a, b = space.sample(rng), space.sample(rng)
    state = {
        "banks": {"0.5": [[a.to_dict(), -1.2], [{"bad": 1}, 0]], "1.1": [{"arch": b.to_dict()}]}
    }
    assert list(archs_in(state)) == [a, b]


@pytest.mark.slow
def test_subnet_evaluator_recalibrates_and_measures_top1():
    import tensorflow as tf

    from elasticvit_tf import model_dir as md
    from elasticvit_tf.supernet import ElasticSupernet

    tf.random.set_seed(0)
    space = get_space("tiny")
    net = ElasticSupernet(space, 10, num_slots=2)
    md.ensure_built(net, space)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 24, 24, 3)).astype("float32")
    y = rng.integers(0, 10, size=24).astype("int32")
    calib = tf.data.Dataset.from_tensor_slices((2.0 + 3.0 * x, y)).batch(8).repeat()
    evald = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    arch = space.sample(rng)
    bn = net.batch_norm_layers()[0]
    before = np.array(bn.moving_mean)
    ev = SubnetEvaluator(net, calib, evald, calibration_batches=3, eval_batches=2, slot=1)
    top1 = ev.evaluate(arch)
    assert net.get_arch(1) == arch
    assert not np.allclose(np.array(bn.moving_mean), before)  # BN was recalibrated
    logits = net(x[:16], training=False, slot=1)
    want = float(np.mean(np.argmax(np.asarray(logits), -1) == y[:16]))  # 2 batches of 8
    assert top1 == pytest.approx(want)
    # Same statistics as calling the library's recalibrate_bn directly.
    from elasticvit_tf.extract import recalibrate_bn

    arch2 = space.sample(rng)
    ev.evaluate(arch2)
    ours = [
        np.array(v) for b in net.batch_norm_layers() for v in (b.moving_mean, b.moving_variance)
    ]
    recalibrate_bn(net, calib, 3, slot=1)
    ref = [np.array(v) for b in net.batch_norm_layers() for v in (b.moving_mean, b.moving_variance)]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="calibration_batches"):
        SubnetEvaluator(net, calib, evald, calibration_batches=-1)

"""search/latency.py and lut.py: FLOPs proxy, LUT loading (round trip, refusals), prediction,
ranking."""

import json

import numpy as np
import pytest

from elasticvit_tf import lut as lut_lib
from elasticvit_tf.blocks import BlockKind, block_features, enumerate_blocks, plan
from elasticvit_tf.flops import count_flops
from elasticvit_tf.lut import LutLatencyPredictor, load_predictor
from elasticvit_tf.search.latency import FlopsProxyPredictor, LatencyPredictor
from elasticvit_tf.space import get_space


def _archs(space, n, seed=0):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


# ------------------------------------------------------------------------- FLOPs proxy
@pytest.mark.parametrize("name", ["tiny", "demo", "elasticvit"])
def test_flops_proxy_is_monotone_in_flops(name):
    space = get_space(name)
    p = FlopsProxyPredictor(space, ms_per_mflop=0.02, constant_ms=0.3)
    archs = sorted(_archs(space, 200), key=lambda a: count_flops(space, a))
    preds = [p.predict(a) for a in archs]
    assert all(b >= a for a, b in zip(preds, preds[1:]))
    assert preds[-1] > preds[0]
    a = archs[0]
    assert p.predict(a) == pytest.approx(0.3 + 0.02 * count_flops(space, a))
    assert isinstance(p, LatencyPredictor) and p.mode == "flops"


def test_flops_proxy_fit_and_bad_input():
    space = get_space("demo")
    archs = _archs(space, 10)
    ms = [0.5 + 0.03 * count_flops(space, a) for a in archs]
    p = FlopsProxyPredictor.fit(space, archs, ms)
    assert p.ms_per_mflop == pytest.approx(0.03) and p.constant_ms == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ms_per_mflop"):
        FlopsProxyPredictor(space, ms_per_mflop=0.0)
    with pytest.raises(ValueError, match="constant_ms"):
        FlopsProxyPredictor(space, constant_ms=-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        FlopsProxyPredictor.fit(space, archs[:1], ms[:1])
    with pytest.raises(ValueError, match="resolution"):
        p.predict(archs[0].replace(resolution=1))


# ------------------------------------------------------------------------------ LUT
def _block_ms(sig):
    f = block_features(sig)
    return 0.003 + 2e-6 * f["macs"] + 1e-6 * f["act_elems"]


def _lut(space, mode="fp32", measured_every=3):
    """A hand-made LUT: every 3rd signature measured; per-kind linear models exact."""
    entries, models = [], {}
    for kind, sigs in enumerate_blocks(space).items():
        for s in sigs[::measured_every]:
            entries.append({"op": s.to_dict(), "latency_ms": _block_ms(s) + 0.01})
        models[kind.value] = {
            "features": ["macs", "act_elems"],
            "coef": [2e-6, 1e-6],
            "intercept": 0.003,
            "n_samples": 3,
            "train_mape": 0.0,
        }
    return {
        "format": "elasticvit-latency-lut",
        "version": lut_lib.VERSION,
        "space": space.name,
        "space_fingerprint": space.fingerprint(),
        "mode": mode,
        "provenance": {"target": "local", "num_threads": 1},
        "constant_ms": 0.1,
        "scale": 1.0,
        "entries": entries,
        "models": models,
    }


def test_lut_round_trip_and_prediction(tmp_path):
    space = get_space("demo")
    d = _lut(space)
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(d))
    p = load_predictor(str(path), space, "fp32")
    q = LutLatencyPredictor.from_json(d, space)
    assert isinstance(p, LatencyPredictor) and p.mode == "fp32"
    measured = {e["op"]["kind"] for e in d["entries"]}
    assert measured == {k.value for k in BlockKind}
    for a in _archs(space, 20, seed=5):
        ops = plan(space, a)
        want = 0.1 + sum(_block_ms(s) + (0.01 if s in p.entries else 0.0) for s in ops)
        assert p.predict(a) == pytest.approx(want, rel=1e-9)
        assert q.predict(a) == p.predict(a)
        bd = p.breakdown(a)
        assert [s for s, _, _ in bd] == ops
        assert any(m for _, _, m in bd) or not any(s in p.entries for s in ops)
    assert p.provenance["target"] == "local"


def test_lut_refuses_other_space_and_other_mode(tmp_path):
    demo, tiny = get_space("demo"), get_space("tiny")
    path = tmp_path / "lut_demo_fp32.json"
    path.write_text(json.dumps(_lut(demo, "fp32")))
    with pytest.raises(ValueError) as e:
        load_predictor(str(path), tiny)
    msg = str(e.value)
    assert demo.fingerprint() in msg and tiny.fingerprint() in msg
    assert "'demo'" in msg and "'tiny'" in msg
    with pytest.raises(ValueError) as e:
        load_predictor(str(path), demo, mode="int8")
    assert "'fp32'" in str(e.value) and "'int8'" in str(e.value)
    # float32 is an alias of fp32.
    assert load_predictor(str(path), demo, mode="float32").mode == "fp32"


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=3), "version"),
        (lambda d: d.update(version=1), "version=1.*rebuild it with elasticvit-lut"),
        (lambda d: d.pop("models"), "missing"),
        (lambda d: d.update(mode="fp16"), "mode='fp16'"),
        (lambda d: d["entries"][0].pop("latency_ms"), r"entries\[0\]"),
        (lambda d: d["models"]["head"].pop("intercept"), "head"),
    ],
)
def test_lut_malformed(mutate, match):
    space = get_space("tiny")
    d = _lut(space)
    mutate(d)
    with pytest.raises(ValueError, match=match):
        LutLatencyPredictor.from_json(d, space)


def test_lut_unreadable_files(tmp_path):
    space = get_space("tiny")
    with pytest.raises(ValueError, match="cannot read"):
        load_predictor(str(tmp_path / "missing.json"), space)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        load_predictor(str(bad), space)


def test_lut_missing_model_for_unmeasured_block():
    space = get_space("demo")
    d = _lut(space, measured_every=10**6)  # only the first signature of each kind measured
    del d["models"]["transformer"]
    p = LutLatencyPredictor.from_json(d, space)
    with pytest.raises(ValueError, match="'transformer' block"):
        p.predict(space.max_arch())


# ------------------------------------------------------------------- real measurements
@pytest.mark.slow
def test_lut_predictor_ranks_held_out_tiny_subnets():
    """Build a small real LUT (fp32, 1 thread), measure held-out subnets spread over the FLOPs
    range end to end, and check the rank correlation (loose: timings on a shared CPU)."""
    from scipy.stats import spearmanr

    from elasticvit_tf.export import lut_builder

    space = get_space("tiny")
    # CPU time of the calling thread (1 thread): what a loaded shared CPU does not inflate; a
    # wall-clock LUT built while another pytest worker trained read 6x high once.
    cpu = lut_builder.MeasureConfig(num_threads=1, clock="cpu")
    lut = lut_builder.build_mode_lut(space, "fp32", budget_s=8.0, num_calibration=2, cfg=cpu)
    pred = load_predictor(lut, space, "fp32")
    pool = sorted(_archs(space, 300, seed=99), key=lambda a: count_flops(space, a))
    held_out = [pool[int(q * (len(pool) - 1))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    cfg = lut_builder.MeasureConfig(num_threads=1, warmup=5, runs=30, min_time_s=0.05, clock="cpu")
    true = [lut_builder.measure_arch(space, a, "fp32", cfg)["median_ms"] for a in held_out]
    p = [pred.predict(a) for a in held_out]
    rho = spearmanr(p, true).statistic
    assert rho >= 0.7, (rho, p, true)
    # Sanity only: an 8 s budget measures ~1 block per kind on a loaded CPU, and predictions
    # were seen up to 4x high on `tiny` (ranking held); the accuracy figures come from
    # benchmarks/latency_predictor.py with a real budget.
    ratio = np.asarray(p) / np.asarray(true)
    assert np.all((ratio > 0.2) & (ratio < 5.0)), (p, true)

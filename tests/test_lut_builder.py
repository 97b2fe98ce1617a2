"""LUT builder: design, per-type fits, calibration, JSON output (fake timings), real blocks."""

import dataclasses
import json
import os
import time
import types

import numpy as np
import pytest

from elasticvit_tf import lut as lut_lib
from elasticvit_tf.blocks import BlockKind, BlockSpec, block_features, enumerate_blocks, plan
from elasticvit_tf.export import lut_builder
from elasticvit_tf.space import get_space

# A known "device": every block costs 2 us + 1 ns per MAC + 0.5 ns per activation element;
# each invoke costs _INVOKE_MS once; a whole subnet has _OVERHEAD_MS more.
_OVERHEAD_MS = 0.05
_INVOKE_MS = 0.004


def _fake_block_ms(sig):
    f = block_features(sig)
    return 0.002 + 1e-6 * f["macs"] + 5e-7 * f["act_elems"]


def _fake_whole(space, arch):
    return sum(_fake_block_ms(s) for s in plan(space, arch)) + _OVERHEAD_MS + _INVOKE_MS


@pytest.fixture
def fake_device(monkeypatch):
    calls = {"op": 0, "arch": 0}

    def measure_op(sig, mode, cfg):
        calls["op"] += 1
        return _fake_block_ms(sig) * (1.5 if mode == "int8" else 1.0) + _INVOKE_MS

    def measure_invoke_overhead(mode, cfg):
        return _INVOKE_MS

    def measure_archs(space, archs, mode, cfg, deadline=None, expected_ms=None, log=None):
        calls["arch"] += len(archs)
        f = 1.5 if mode == "int8" else 1.0
        return [{"median_ms": _fake_whole(space, a) * f} for a in archs]

    monkeypatch.setattr(lut_builder, "measure_op", measure_op)
    monkeypatch.setattr(lut_builder, "measure_archs", measure_archs)
    monkeypatch.setattr(lut_builder, "measure_invoke_overhead", measure_invoke_overhead)
    return calls


def test_build_lut_writes_versioned_json_with_provenance(tmp_path, fake_device):
    space = get_space("tiny")
    out = lut_builder.build_lut(
        space, modes=("fp32", "int8"), budget_s=1.0, output_path=str(tmp_path), log=lambda s: None
    )
    assert set(out) == {"fp32", "int8"}
    for mode, r in out.items():
        name = os.path.basename(r["path"])
        assert name.startswith(f"lut_tiny_local_{mode}_t1_") and name.endswith(".json")
        with open(r["path"]) as f:
            d = json.load(f)
        assert d == json.loads(json.dumps(r["lut"]))
        assert d["format"] == "elasticvit-latency-lut" and d["version"] == 2
        assert d["space"] == "tiny" and d["space_fingerprint"] == space.fingerprint()
        assert d["export_mode"] == {"fp32": "float32", "int8": "int8"}[mode]
        assert d["mode"] == mode
        prov = d["provenance"]
        for key in ("target", "runtime", "runtime_version", "num_threads", "warmup", "runs"):
            assert key in prov
        for key in ("date", "host", "builder_commit"):
            assert prov[key]
        assert prov["target"] == "local" and prov["num_threads"] == 1
        # Every block type got at least one measurement and a model, even on a tiny budget.
        kinds = {e["op"]["kind"] for e in d["entries"]}
        assert kinds == {k.value for k in BlockKind}
        assert set(d["models"]) == {k.value for k in BlockKind}
    assert fake_device["arch"] >= 4  # >= 2 calibration subnets per mode


def test_fit_recovers_a_linear_device_and_predicts_held_out_archs(fake_device):
    space = get_space("demo")
    lut = lut_builder.build_mode_lut(space, "fp32", budget_s=5.0, num_calibration=3)
    pred = lut_lib.load_predictor(lut, space, "fp32")
    rng = np.random.default_rng(11)
    for _ in range(30):
        a = space.sample(rng)
        assert pred.predict(a) == pytest.approx(_fake_whole(space, a), rel=0.03)
    assert lut["constant_ms"] == pytest.approx(_OVERHEAD_MS + _INVOKE_MS, abs=0.01)
    assert lut["invoke_overhead_ms"] == _INVOKE_MS
    # Entries are net of the invoke overhead.
    e = lut["entries"][0]
    sig = BlockSpec.from_dict(e["op"])
    assert e["latency_ms"] == pytest.approx(_fake_block_ms(sig))


def test_measure_fraction_measures_a_share_and_predicts_the_rest(fake_device):
    space = get_space("demo")
    n = len(lut_builder.design_order(space))
    lut = lut_builder.build_mode_lut(
        space, "fp32", budget_s=1e6, num_calibration=3, measure_fraction=0.25
    )
    assert lut["design"] == {
        "blocks_in_space": n,
        "measured": len(lut["entries"]),
        "measure_fraction": 0.25,
    }
    assert len(lut["entries"]) == int(np.ceil(0.25 * n)) == fake_device["op"]
    # The models, fitted on the measured quarter only, price held-out blocks and archs.
    assert all(m["cv_mape"] < 0.02 for m in lut["models"].values() if "cv_mape" in m)
    assert "cv_mape" in lut["models"]["mbconv"]
    pred = lut_lib.load_predictor(lut, space, "fp32")
    rng = np.random.default_rng(5)
    for _ in range(20):
        a = space.sample(rng)
        assert pred.predict(a) == pytest.approx(_fake_whole(space, a), rel=0.03)
    with pytest.raises(ValueError, match="measure_fraction=0: expected a share in"):
        lut_builder.build_lut(space, measure_fraction=0)


def test_kind_scales_correct_what_isolated_blocks_miss(fake_device, monkeypatch):
    """In whole subnets, transformer layers cost 1.3x their isolated time (cache effects):
    the per-type correction, fitted on measured subnets only, recovers it."""
    space = get_space("demo")

    def whole_ms(arch):
        ms = sum(
            _fake_block_ms(s) * (1.3 if s.kind is BlockKind.TRANSFORMER else 1.0)
            for s in plan(space, arch)
        )
        return ms + _OVERHEAD_MS + _INVOKE_MS

    def measure_archs(space, archs, mode, cfg, deadline=None, expected_ms=None, log=None):
        return [{"median_ms": whole_ms(a)} for a in archs]

    monkeypatch.setattr(lut_builder, "measure_archs", measure_archs)
    few = lut_builder.build_mode_lut(space, "fp32", budget_s=1e6, num_calibration=4)
    assert few["kind_scales"] == {}  # too few subnets: no correction
    lut = lut_builder.build_mode_lut(space, "fp32", budget_s=1e6, num_calibration=12)
    # the ridge of fit_kind_scales pulls every scale a little towards 1
    assert 1.22 < lut["kind_scales"]["transformer"] < 1.32
    assert lut["kind_scales"]["mbconv"] == pytest.approx(1.0, abs=0.05)
    pred = lut_lib.load_predictor(lut, space)
    old = lut_lib.load_predictor(dict(lut, kind_scales={}), space)
    rng = np.random.default_rng(21)
    errs, old_errs = [], []
    for _ in range(20):
        a = space.sample(rng)
        true = whole_ms(a)
        errs.append(abs(pred.predict(a) / true - 1))
        old_errs.append(abs(old.predict(a) / true - 1))
    assert max(errs) < 0.03 and np.mean(errs) < np.mean(old_errs)
    assert lut_builder.refit_lut(lut, space)["kind_scales"] == pytest.approx(lut["kind_scales"])


def test_fit_kind_model_exact_on_linear_data():
    sigs = enumerate_blocks(get_space("demo"))[BlockKind.MBCONV][:20]
    ms = [3e-4 + 2e-6 * block_features(s)["macs"] + 1e-6 * block_features(s)["ops"] for s in sigs]
    m = lut_builder.fit_kind_model(BlockKind.MBCONV, sigs, ms)
    assert m["features"] == list(lut_builder.KIND_FEATURES[BlockKind.MBCONV])
    assert m["n_samples"] == 20
    assert m["train_mape"] < 1e-6
    assert all(c >= 0 for c in m["coef"])
    for s, y in zip(sigs, ms):
        assert lut_lib.predict_block(m, s) == pytest.approx(y, rel=1e-6)


def test_kinds_with_few_samples_use_the_all_kinds_model():
    space = get_space("demo")
    order = lut_builder.design_order(space)
    measured = {s: _fake_block_ms(s) for s in order[:6]}  # 1 per kind
    models = lut_builder.fit_models(measured)
    assert {m["source"] for m in models.values()} == {"all_kinds"}
    more = lut_builder.fit_models({s: _fake_block_ms(s) for s in order[:12]})  # 2 per kind
    assert {m["source"] for m in more.values()} == {"kind"}
    assert all(m["features"] == ["macs"] for m in more.values())
    head = [s for s in enumerate_blocks(space)[BlockKind.HEAD]][0]
    assert lut_lib.predict_block(models["head"], head) == pytest.approx(
        _fake_block_ms(head), rel=0.05
    )


def test_design_order_covers_every_kind_first_with_extremes():
    space = get_space("demo")
    order = lut_builder.design_order(space, seed=0)
    n_kinds = len(BlockKind)
    assert {s.kind for s in order[:n_kinds]} == set(BlockKind)
    assert len(order) == len(set(order)) == sum(len(v) for v in enumerate_blocks(space).values())
    for kind, sigs in enumerate_blocks(space).items():
        first_two = [s for s in order if s.kind is kind][:2]
        macs = [block_features(s)["macs"] for s in sigs]
        assert {block_features(s)["macs"] for s in first_two} == {min(macs), max(macs)}
    assert lut_builder.design_order(space, seed=0) == order


def test_fit_calibration():
    assert lut_builder.fit_calibration([1.0, 2.0], [1.1, 2.3]) == (1.0, pytest.approx(0.2))
    sums = [1.0, 2.0, 3.0, 4.0, 5.0]
    scale, const = lut_builder.fit_calibration(sums, [1.1 * s + 0.3 for s in sums])
    assert scale == pytest.approx(1.1) and const == pytest.approx(0.3)
    # A scale outside [0.8, 1.25] is not a "small correction": constant only.
    scale, const = lut_builder.fit_calibration(sums, [1.9 * s for s in sums])
    assert scale == 1.0 and const == pytest.approx(2.7)
    # Disturbed subnets (whole > 2x its blocks) are left out; the constant has a floor.
    assert lut_builder.fit_calibration([0.1, 0.4], [0.11, 5.4]) == (1.0, pytest.approx(0.01))
    assert lut_builder.fit_calibration([1.0, 2.0], [0.6, 1.2]) == (1.0, pytest.approx(-0.5))


def test_file_name_and_bad_input():
    assert (
        lut_lib.file_name("demo", "adb:R58M", "float32", 4, "2026-11-25T19:00:00+00:00")
        == "lut_demo_adb-R58M_fp32_t4_20261125.json"
    )
    space = get_space("tiny")
    with pytest.raises(ValueError, match="mode='fp16'"):
        lut_builder.build_lut(space, modes=("fp16",))
    with pytest.raises(ValueError, match="target='gpu'"):
        lut_builder.build_lut(space, target="gpu")
    with pytest.raises(ValueError, match="benchmark_model_path"):
        lut_builder.build_lut(space, target="adb:XYZ")
    with pytest.raises(ValueError, match="budget_s"):
        lut_builder.build_lut(space, budget_s=0)
    with pytest.raises(ValueError, match="num_threads"):
        lut_builder.build_lut(space, num_threads=0)
    with pytest.raises(ValueError, match="clock='cpu'"):
        lut_builder.build_lut(space, num_threads=2, clock="cpu")
    with pytest.raises(ValueError, match="clock='gpu'"):
        lut_builder.build_lut(space, clock="gpu")


def _layer_types(model):
    return [type(l).__name__ for l in model.layers if type(l).__name__ != "InputLayer"]


def test_block_models_are_the_shipped_static_layers():
    """Time what ships: the LUT's one-block models, chained over an arch's plan, hold the same
    Keras layers in the same order as the extracted subnet (``extract_subnet``)."""
    from elasticvit_tf.export.lut_blocks import build_arch_model, build_op_model

    space = get_space("tiny")
    for arch in (space.min_arch(), space.sample(np.random.default_rng(3))):
        chained = []
        for sig in plan(space, arch):
            if sig.kind is BlockKind.TRANSITION and "Reshape" not in chained:
                chained.append("Reshape")  # the map -> tokens reshape of the first stage
            chained += _layer_types(build_op_model(sig))
        shipped = build_arch_model(space, arch)
        assert shipped.name.startswith("subnet_")
        assert chained == _layer_types(shipped)


@pytest.mark.slow
def test_real_blocks_convert_builtin_only_and_time(tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    from elasticvit_tf.export import tflite as tflite_lib

    space = get_space("tiny")
    sigs = [
        BlockSpec(BlockKind.TRANSFORMER, 2, 32, 32, mlp_ratio=2, v_scale=2, head_dim=16),
        BlockSpec(BlockKind.MBCONV, 12, 8, 16, stride=2, kernel=5, expand_ratio=2, se=True),
    ]
    assert all(s in set(enumerate_blocks(space)[s.kind]) for s in sigs)
    from elasticvit_tf.export.lut_blocks import build_op_model

    for sig, mode in zip(sigs, ("int8", "fp32")):
        tfl = lut_builder.convert_for_latency(build_op_model(sig), mode)
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(tfl, 0))
        codes = {oc.builtinCode for oc in model.operatorCodes}
        assert schema.BuiltinOperator.CUSTOM not in codes
        if mode == "int8":  # the shipped mixed recipe: attention math stays float
            assert schema.BuiltinOperator.QUANTIZE in codes
            assert "BATCH_MATMUL" in tflite_lib.float_op_types(tfl)
        cfg = lut_builder.MeasureConfig(warmup=2, runs=5, min_time_s=0.0, sessions=1)
        st = lut_builder.time_model(tfl, cfg)
        assert st["median_ms"] > 0 and st["robust_cv"] >= 0
        cpu = lut_builder.time_model(tfl, dataclasses.replace(cfg, clock="cpu"))
        assert cpu["median_ms"] > 0
        with pytest.raises(ValueError, match="num_threads=1"):
            lut_builder.time_model(tfl, dataclasses.replace(cfg, num_threads=2, clock="cpu"))


def test_binary_bad_input_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    for flag, match in (
        ("--space=nope", "unknown space 'nope'"),
        ("--modes=fp16", "mode='fp16'"),
        ("--measure_fraction=0", "measure_fraction=0.0: expected a share in (0, 1]"),
    ):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "elasticvit_tf.export.lut_main",
                flag,
                f"--output_dir={tmp_path}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert match in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_prior_entries_are_kept_and_must_match(fake_device):
    space = get_space("tiny")
    first = lut_builder.build_mode_lut(space, "fp32", budget_s=0.5, num_calibration=2)
    n_first = fake_device["op"]
    again = lut_builder.build_mode_lut(space, "fp32", budget_s=0.5, num_calibration=2, prior=first)
    assert fake_device["op"] == n_first  # nothing re-measured on a short budget
    assert again["entries"] == first["entries"]
    with pytest.raises(ValueError, match="prior LUT"):
        lut_builder.build_mode_lut(space, "int8", budget_s=0.5, prior=first)


def test_refit_reproduces_a_build_from_its_own_data(fake_device):
    space = get_space("demo")
    lut = lut_builder.build_mode_lut(space, "fp32", budget_s=2.0, num_calibration=3)
    again = lut_builder.refit_lut(json.loads(json.dumps(lut)), space)
    assert again["models"] == json.loads(json.dumps(lut["models"]))
    assert again["constant_ms"] == pytest.approx(lut["constant_ms"])
    assert again["entries"] == json.loads(json.dumps(lut["entries"]))
    with pytest.raises(ValueError, match="fingerprint"):
        lut_builder.refit_lut(lut, get_space("tiny"))


def test_calibration_archs_designs():
    """The min arch first; ``uniform``: random draws (the low end of the real space's FLOPs,
    where searched subnets are); ``spread``: archs in every FLOPs quarter; ``mixed`` (the
    default): half uniform draws, half in the upper three quarters. Distinct and seeded."""
    from elasticvit_tf.flops import count_flops

    space = get_space("elasticvit")
    lo, hi = count_flops(space, space.min_arch()), count_flops(space, space.max_arch())

    def quarter(a):
        return min(int(4 * (count_flops(space, a) - lo) / (hi - lo)), 3)

    designs = {}
    for design in lut_builder.CALIBRATION_DESIGNS:
        archs = lut_builder.calibration_archs(space, 12, seed=0, design=design)
        assert archs[0].key() == space.min_arch().key() and len({a.key() for a in archs}) == 12
        again = lut_builder.calibration_archs(space, 12, seed=0, design=design)
        assert [a.key() for a in again] == [a.key() for a in archs]
        designs[design] = [quarter(a) for a in archs[1:]]
    assert max(designs["uniform"]) <= 1 and designs["uniform"].count(0) >= 8
    assert sorted(designs["spread"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert designs["mixed"][:5].count(0) >= 4 and sorted(designs["mixed"][5:]) == [1, 1, 2, 2, 3, 3]
    default = lut_builder.calibration_archs(space, 12, seed=0)
    assert [a.key() for a in default] == [
        a.key() for a in lut_builder.calibration_archs(space, 12, seed=0, design="mixed")
    ]
    with pytest.raises(ValueError, match=r"design='wide': expected one of \['mixed'"):
        lut_builder.calibration_archs(space, 12, design="wide")


def test_measure_archs_converts_all_before_timing_and_reserves_the_timing(monkeypatch):
    """Subnets are timed in passes after every conversion (never right after their own);
    under a deadline, a conversion starts only when it (as long as the earlier ones took) and
    the timing of every converted subnet still fit. A fake clock: a conversion takes 20 s."""
    space = get_space("tiny")
    archs = lut_builder.calibration_archs(space, 5, design="uniform")
    events, clock = [], {"t": 0.0}
    monkeypatch.setattr(lut_builder, "time", types.SimpleNamespace(monotonic=lambda: clock["t"]))

    def convert(model, mode):
        events.append("convert")
        clock["t"] += 20.0
        return b"x"

    def time_models(paths, cfg):
        events.append(("time", len(paths), cfg.sessions))
        return [{"median_ms": 1.0} for _ in paths]

    monkeypatch.setattr(lut_builder, "convert_for_latency", convert)
    monkeypatch.setattr(lut_builder, "time_models", time_models)
    cfg = lut_builder.MeasureConfig(warmup=0, runs=100, sessions=3)
    out = lut_builder.measure_archs(space, archs, "fp32", cfg)
    assert len(out) == 5 and events == ["convert"] * 5 + [("time", 5, 3)]
    # conversions end at 20, 40, 60, 80 s: the 5th (80 + 20 > 90) does not start
    for deadline, expected_ms, n in ((90.0, None, 4), (100.0, None, 5), (100.0, [10.0] * 5, 4)):
        events.clear()
        clock["t"] = 0.0
        out = lut_builder.measure_archs(space, archs, "fp32", cfg, deadline, expected_ms)
        assert len(out) == n and events == ["convert"] * n + [("time", n, 3)]
    # timing alone (3 passes x 100 runs x 100 ms = 30 s per subnet) stops it after 2
    clock["t"] = 0.0
    assert len(lut_builder.measure_archs(space, archs, "fp32", cfg, 100.0, [100.0] * 5)) == 2


def test_recalibrate_lut_keeps_blocks_and_refits_on_stratified_subnets(fake_device):
    space = get_space("demo")
    lut = lut_builder.build_mode_lut(space, "fp32", budget_s=5.0, num_calibration=2)
    calls = fake_device["arch"]
    new = lut_builder.recalibrate_lut(lut, space, num_calibration=6)
    assert fake_device["arch"] == calls + 6
    assert new["entries"] == lut["entries"] and new["models"] == lut["models"]
    want = [a.to_dict() for a in lut_builder.calibration_archs(space, 6)]
    assert new["calibration"]["archs"] == want
    pred = lut_lib.load_predictor(new, space, "fp32")
    for a in lut_builder.calibration_archs(space, 6, seed=5, design="spread"):
        assert pred.predict(a) == pytest.approx(_fake_whole(space, a), rel=0.03)


# The 12 calibration subnets of an `elasticvit` fp32 LUT measured on the project's 2-core x86
# VM (2026-12-07, benchmarks/README.md#latency_predictorpy): per-type block sums (first_conv,
# head, mbconv, stem_block, transformer, transition) and the whole subnet, ms.
_ELASTICVIT_CALIBRATION = [
    ([0.05, 0.266, 0.215, 0.064, 0.363, 0.263], 1.649),
    ([0.084, 0.389, 1.987, 0.13, 1.96, 0.599], 6.536),
    ([0.05, 0.444, 1.448, 0.271, 2.275, 0.446], 6.905),
    ([0.069, 0.91, 2.044, 0.099, 4.78, 1.013], 11.898),
    ([0.083, 0.548, 1.081, 0.12, 5.567, 1.171], 11.419),
    ([0.05, 0.633, 1.523, 0.271, 2.394, 0.379], 7.002),
    ([0.135, 0.569, 4.235, 0.389, 14.06, 1.386], 23.892),
    ([0.176, 0.816, 3.172, 0.534, 18.695, 2.379], 29.380),
    ([0.176, 0.816, 3.719, 1.068, 34.93, 2.461], 47.845),
    ([0.343, 0.816, 8.7, 2.062, 26.596, 2.348], 45.797),
    ([0.176, 0.816, 9.967, 0.254, 42.362, 3.033], 62.805),
    ([0.343, 0.816, 10.956, 2.062, 41.769, 3.444], 64.093),
]


def test_choose_ridge_by_leave_one_out():
    """Exact per-type effects: the weakest ridge (the fit recovers them). Measured subnets
    of the real space (nearly collinear per-type sums, measurement noise): a strong ridge,
    whose scales stay near 1 where the weakest one fitted mbconv x1.46 and head x1.75.
    Too few subnets for a left-out fit: the first candidate."""
    kinds = ("first_conv", "head", "mbconv", "stem_block", "transformer", "transition")
    sums = [dict(zip(kinds, row)) for row, _ in _ELASTICVIT_CALIBRATION]
    wholes = [w for _, w in _ELASTICVIT_CALIBRATION]
    ridge = lut_builder.choose_ridge(sums, wholes)
    assert ridge >= 1.0
    weak = lut_builder.fit_kind_scales(sums, wholes, lut_builder.RIDGE_GRID[0])
    assert weak["mbconv"] > 1.4 and weak["head"] > 1.6
    assert all(0.9 < v < 1.2 for v in lut_builder.fit_kind_scales(sums, wholes).values())
    exact = [1.3 * ks["transformer"] + sum(ks.values()) - ks["transformer"] for ks in sums]
    assert lut_builder.choose_ridge(sums, exact) == lut_builder.RIDGE_GRID[0]
    assert lut_builder.choose_ridge(sums[:8], wholes[:8]) == lut_builder.RIDGE_GRID[0]

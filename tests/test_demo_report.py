"""Tests for elasticvit_tf.pipeline.report (synthetic pipeline context, no TensorFlow work)."""

import json
import os
import shlex

import pytest

from elasticvit_tf.pipeline import report as report_lib
from elasticvit_tf.pipeline.stages import Layout


def _mode(acc, keras_acc, ms, size=20480):
    return {
        "file": None,
        "size_bytes": size,
        "accuracy": acc,
        "keras_accuracy": keras_acc,
        "accuracy_drop": keras_acc - acc,
        "max_abs_error": 1e-6,
        "top1_agreement": 99.0,
        "median_ms": ms,
        "p5_ms": ms * 0.9,
        "p95_ms": ms * 1.2,
    }


def _context(tmp_path, int8_accs=(85.5, 86.0), float_accs=(86.0, 87.0)):
    layout = Layout(str(tmp_path))
    budgets = [1.0, 2.0]
    best, exports, configs = {}, {}, {}
    for i, b in enumerate(budgets):
        tag = f"{b:g}"
        best[tag] = {
            "budget_ms": b,
            "trial_id": f"t{i}",
            "arch_key": f"key{i}",
            "arch": {"resolution": 24},
            "search_top1": 0.8 + 0.01 * i,
            "latency_ms": b - 0.1,
            "mflops": 3.0 + i,
            "params_m": 0.1 + i,
        }
        out = os.path.join(layout.export_dir, f"subnet_{i}")
        modes = {
            "float32": _mode(float_accs[i], float_accs[i], 0.5 + i),
            "int8": _mode(int8_accs[i], float_accs[i], 0.7 + i),
        }
        for m, e in modes.items():
            e["file"] = os.path.join(out, f"model_{m}.tflite")
        exports[tag] = {
            "name": f"subnet_{i}",
            "arch_path": os.path.join(layout.export_dir, f"subnet_{i}_arch.json"),
            "output_dir": out,
            "report_json": os.path.join(out, "export_report.json"),
            "report_md": os.path.join(out, "export_report.md"),
            "seconds": 3.0,
            "num_verify_images": 256,
            "modes": modes,
        }
        configs[f"subnet_{i}"] = {
            "model_dir": layout.model_dir,
            "arch": exports[tag]["arch_path"],
            "space": "demo",
            "quantize": ("float32", "int8"),
            "representative_steps": 32,
            "calibration_batches": 4,
            "verify_images": 256,
            "max_accuracy_drop": 100.0,
            "num_threads": 1,
            "warmup_runs": 3,
            "benchmark_runs": 10,
            "seed": 0,
            "output_dir": out,
        }
    from elasticvit_tf.pipeline.demo_config import QUICK_PLAN

    return {
        "config": {
            "output_dir": str(tmp_path),
            "quick": True,
            "dataset": "digits",
            "seed": 0,
            "num_threads": 1,
        },
        "plan": dict(QUICK_PLAN),
        "layout": layout,
        "dataset": {"name": "digits", "data_dir": None, "notices": ["fell back to digits"]},
        "train_config": {
            "model_dir": layout.model_dir,
            "space": "demo",
            "dataset": "digits",
            "steps": None,
            "lr": 4e-3,
            "sampler_kwargs": {},
            "verbose": 0,
        },
        "train": {
            "step": 40,
            "target_steps": 40,
            "planned_steps": 40,
            "time_boxed": False,
            "probe_steps": 0,
            "probe_steps_per_s": None,
            "min_top1": 0.5,
            "max_top1": 0.6,
            "eval_split": "test",
            "train_seconds": 10.0,
            "images_per_second": 500.0,
            "resumed_from_step": 0,
            "trace_count": 1,
        },
        "lut": {
            "paths": {
                "fp32": os.path.join(layout.lut_dir, "a.json"),
                "int8": os.path.join(layout.lut_dir, "b.json"),
            },
            "modes": {
                "fp32": {
                    "blocks_measured": 12,
                    "build_seconds": 5.0,
                    "constant_ms": 0.1,
                    "min_arch_ms": 0.5,
                    "max_arch_ms": 2.5,
                }
            },
        },
        "lut_settings": {
            "modes": ("fp32", "int8"),
            "target": "local",
            "num_threads": 1,
            "budget_s": 8.0,
            "warmup": 2,
            "runs": 5,
            "num_calibration": 2,
            "seed": 0,
        },
        "budgets_ms": budgets,
        "budget_source": "test",
        "search_config": {
            "model_dir": layout.model_dir,
            "space": "demo",
            "latency_lut": "a.json",
            "latency_mode": "fp32",
            "latency_budgets_ms": tuple(budgets),
            "max_trials": 6,
            "population": 4,
            "seed": 0,
            "directory": layout.root,
            "project_name": "search",
            "calibration_batches": 3,
            "eval_batches": 3,
            "batch_size": 64,
        },
        "search": {
            "trials": 6,
            "stop_reason": None,
            "front": ["t0", "t1"],
            "best": best,
            "points": [],
            "paths": {"pareto.json": os.path.join(layout.search_dir, "pareto.json")},
        },
        "export": {"budgets": exports, "configs": configs, "files": []},
        "stages": {
            "train": {"seconds": 10.0, "reused": False},
            "lut": {"seconds": 5.0, "reused": False},
            "search": {"seconds": 7.0, "reused": True},
            "export": {"seconds": 6.0, "reused": False},
        },
        "wall_seconds": 30.0,
        "load_average": {"start": [8.0, 8.0, 8.0], "end": [9.0, 9.0, 9.0]},
        "curves": {"loss": [(1, 2.3), (2, 2.1), (3, 1.9)], "eval/max_top1": [(3, 0.6)]},
    }


def test_build_report_goals_and_stage_times(tmp_path):
    r = report_lib.build_report(_context(tmp_path))
    g = r["goals"]
    assert g["largest_subnet_top1"] == 87.0  # the largest budget's float Keras accuracy
    assert g["largest_subnet_ok"] is True
    assert g["min_float_top1"] == 86.0 and g["every_subnet_ok"] is True
    assert g["max_int8_drop"] == pytest.approx(1.0)  # 87.0 - 86.0
    assert g["int8_ok"] is True
    assert g["all_within_budget"] is True
    assert r["total_seconds"] == pytest.approx(28.0)
    assert r["stages"]["search"]["reused"] is True
    assert r["chosen"][1]["export"]["modes"]["int8"]["file"] == "export/subnet_1/model_int8.tflite"


def test_goals_fail_when_int8_drops_or_accuracy_low(tmp_path):
    r = report_lib.build_report(_context(tmp_path, int8_accs=(80.0, 86.5), float_accs=(79.0, 84.0)))
    g = r["goals"]
    assert g["largest_subnet_ok"] is False and g["largest_subnet_top1"] == 84.0
    assert g["every_subnet_ok"] is False and g["min_float_top1"] == 79.0
    assert g["max_int8_drop"] == pytest.approx(-1.0) and g["int8_ok"] is True
    r = report_lib.build_report(_context(tmp_path, int8_accs=(84.0, 86.0)))
    assert r["goals"]["max_int8_drop"] == pytest.approx(2.0) and r["goals"]["int8_ok"] is False


def test_write_report_markdown_matches_json(tmp_path):
    ctx = _context(tmp_path)
    os.makedirs(ctx["layout"].search_dir)
    r = report_lib.write_report(ctx)
    md = open(ctx["layout"].report_md).read()
    on_disk = json.load(open(ctx["layout"].report_json))
    assert on_disk["goals"] == r["goals"]
    assert "| train | 10.0 | 540 | False |" in md
    assert "| total | 28.0 | 900 | |" in md
    assert "| 2.000 | t1 | 81.00 | 1.900 | 4.00 | 1.100 | yes |" in md
    assert "| 1.000 | int8 | 85.50 | 86.00 | 0.50 | 1e-06 | 20.0 | 0.700 | 0.840 |" in md
    assert "> NOTICE: fell back to digits" in md
    assert "-> NO" not in md
    # The curve is drawn; the search wrote no pareto.png, so none is referenced.
    assert os.path.getsize(ctx["layout"].curve_png) > 1000
    assert on_disk["files"]["pareto_png"] is None


def test_commands_carry_the_demo_settings(tmp_path):
    r = report_lib.build_report(_context(tmp_path))
    c = r["commands"]
    train = shlex.split(c["train"])
    assert train[0] == "elasticvit-train"
    assert "--steps=40" in train and "--dataset=digits" in train and "--lr=0.004" in train
    assert "--verbose=0" in train  # the demo's setting, spelled like every other one
    assert not any(a.startswith("--sampler_kwargs") for a in train)  # the default: left out
    search = shlex.split(c["search"])
    assert "--latency_budget_ms=1,2" in search and "--max_trials=6" in search
    assert len(c["export"]) == 2
    exp = shlex.split(c["export"][0])
    assert "--quantize=float32,int8" in exp and "--max_accuracy_drop=100" in exp
    lut = shlex.split(c["lut"])
    assert "--modes=fp32,int8" in lut and "--budget_s=8" in lut


def test_fallback_search_commands_in_markdown(tmp_path):
    ctx = _context(tmp_path)
    extra = dict(ctx["search_config"], latency_budgets_ms=(1.0,), project_name="search_1ms")
    ctx["search"]["extra_configs"] = [extra]
    r = report_lib.build_report(ctx)
    assert len(r["commands"]["search_extra"]) == 1
    cmd = r["commands"]["search_extra"][0]
    assert "--latency_budget_ms=1" in shlex.split(cmd) and "--project_name=search_1ms" in cmd
    assert cmd in report_lib.markdown(r)


def test_report_states_int8_speed_and_warns_when_slower(tmp_path):
    r = report_lib.build_report(_context(tmp_path))  # int8 0.7 / 1.7 ms vs float32 0.5 / 1.5 ms
    sp = r["chosen"][0]["export"]["int8_speed"]
    assert sp["float32_ms"] == 0.5 and sp["int8_ms"] == 0.7
    assert sp["speedup"] == pytest.approx(0.5 / 0.7)
    assert r["goals"]["int8_slower_budgets_ms"] == [1.0, 2.0]
    md = report_lib.markdown(r)
    assert "int8 0.71x (SLOWER)" in md and "Warning: int8 is slower than float32" in md
    fast = report_lib.int8_speed({"float32": {"median_ms": 2.0}, "int8": {"median_ms": 1.0}})
    assert fast["speedup"] == 2.0
    assert report_lib.int8_speed({"float32": {"median_ms": 2.0}}) is None

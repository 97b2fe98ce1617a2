"""Tests for elasticvit-demo (pipeline/demo_main.py over demo_lib.run_demo).

The slow test runs ``elasticvit-demo --quick`` end to end in a subprocess and checks the
report's content against ``report.json``; a second run of the same command reuses every stage.
"""

import json
import os
import re
import subprocess
import sys

import pytest

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _demo_cmd(*args):
    return [sys.executable, "-m", "elasticvit_tf.pipeline.demo_main", *args]


# ------------------------------------------------------------------------------- fast
def test_binary_bad_flag_exits_2(tmp_path):
    p = subprocess.run(
        _demo_cmd(f"--output_dir={tmp_path}", "--budgets_ms=1,abc"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert p.returncode == 2
    assert "--budgets_ms=1,abc: expected numbers" in p.stderr
    assert not os.path.exists(os.path.join(tmp_path, "stages"))


# ------------------------------------------------------------------------------- report checks
_NUM = r"([-0-9.e+]+)"


def check_report(out_dir: str) -> dict:
    """Checks report.md against report.json and the files on disk; returns the JSON report."""
    r = json.load(open(os.path.join(out_dir, "report.json")))
    md = open(os.path.join(out_dir, "report.md")).read()

    # Stage times: present, positive, the same in both files.
    assert set(r["stages"]) == {"train", "lut", "search", "export"}
    for name, s in r["stages"].items():
        assert s["seconds"] > 0
        m = re.search(rf"^\| {name} \| {_NUM} \| ", md, re.M)
        assert m and float(m.group(1)) == pytest.approx(s["seconds"], abs=0.051), name
    m = re.search(rf"^\| total \| {_NUM} \|", md, re.M)
    assert float(m.group(1)) == pytest.approx(
        sum(s["seconds"] for s in r["stages"].values()), abs=0.051
    )

    # Training accuracies are fractions; printed as percentages.
    t = r["train"]
    assert t["step"] >= 1
    for k in ("min_top1", "max_top1"):
        assert 0.0 <= t[k] <= 1.0
        m = re.search(rf"{k.split('_')[0]} subnet top-1 \(\w+\): {_NUM} %", md)
        assert float(m.group(1)) == pytest.approx(100 * t[k], abs=0.006)

    # Budgets come from the LUT's range, are increasing, and every chosen arch fits its budget.
    fp32 = r["lut"]["fp32"]
    assert 0 < fp32["min_arch_ms"] < fp32["max_arch_ms"]
    budgets = r["budgets_ms"]
    assert len(budgets) == 3 and budgets == sorted(budgets)
    assert fp32["min_arch_ms"] < budgets[0] and budgets[-1] < fp32["max_arch_ms"]
    assert r["search"]["trials"] >= 1
    chosen = [c for c in r["chosen"] if c["found"]]
    assert chosen, "no budget found a subnet"
    for c in chosen:
        assert c["latency_ms"] <= c["budget_ms"] and c["within_budget"] is True
        assert 0.0 <= c["search_top1"] <= 1.0
        row = re.search(
            rf"^\| {c['budget_ms']:.3f} \| {re.escape(c['trial_id'])} \| {_NUM} \| {_NUM} \| ",
            md,
            re.M,
        )
        assert row, f"search row for budget {c['budget_ms']}"
        assert float(row.group(1)) == pytest.approx(100 * c["search_top1"], abs=0.006)
        assert float(row.group(2)) == pytest.approx(c["latency_ms"], abs=0.0006)
        assert c["arch_key"] in md
        # Export per mode: accuracies in percent, files exist, numbers in the markdown.
        modes = c["export"]["modes"]
        assert set(modes) == {"float32", "int8"}
        for mode, e in modes.items():
            assert 0.0 <= e["accuracy"] <= 100.0 and 0.0 <= e["keras_accuracy"] <= 100.0
            assert e["median_ms"] > 0 and e["size_bytes"] > 0
            assert os.path.getsize(os.path.join(out_dir, e["file"])) == e["size_bytes"]
            row = re.search(
                rf"^\| {c['budget_ms']:.3f} \| {mode} \| {_NUM} \| {_NUM} \| .* \| {_NUM} \| "
                rf"{_NUM} \|$",
                md,
                re.M,
            )
            assert row, f"export row {mode} for budget {c['budget_ms']}"
            assert float(row.group(1)) == pytest.approx(e["accuracy"], abs=0.006)
            assert float(row.group(2)) == pytest.approx(e["keras_accuracy"], abs=0.006)
            assert float(row.group(3)) == pytest.approx(e["median_ms"], abs=0.0006)
        assert modes["float32"]["max_abs_error"] <= 1e-4
        for key in ("arch_json", "report_md", "report_json"):
            assert os.path.isfile(os.path.join(out_dir, c["export"][key]))

    # Every file the reports reference exists.
    for k, v in r["files"].items():
        if v is not None:
            assert os.path.exists(os.path.join(out_dir, v)), k
    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert os.path.exists(os.path.join(out_dir, link)), link
    assert r["files"]["pareto_png"] == "pareto.png"
    assert r["files"]["training_curve_png"] == "training_curve.png"

    # Commands to reproduce each step, with the flags the demo used.
    cmds = r["commands"]
    assert cmds["train"].startswith("elasticvit-train ")
    assert f"--steps={t['step']}" in cmds["train"]
    assert cmds["lut"].startswith("elasticvit-lut ") and "--modes=fp32,int8" in cmds["lut"]
    assert cmds["search"].startswith("elasticvit-search ")
    assert "--latency_budget_ms=" + ",".join(f"{b:g}" for b in budgets) in cmds["search"]
    assert len(cmds["export"]) == len({c["arch_key"] for c in chosen})
    for cmd in [cmds["train"], cmds["lut"], cmds["search"], *cmds["search_extra"], *cmds["export"]]:
        assert cmd in md
    return r


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = str(tmp_path / "demo")
    args = _demo_cmd("--quick", f"--output_dir={out}", "--verbose=0")
    # ~3-4 min on 2 idle cores; 20+ min when ~8 other jobs share them (tracing dominates).
    p = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=2700)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for banner in ("stage 1/4", "stage 2/4", "stage 3/4", "stage 4/4"):
        assert banner in p.stdout
    r = check_report(out)
    assert r["config"]["quick"] is True
    assert not any(s["reused"] for s in r["stages"].values())

    # Same command again: every stage is reused, the report is rewritten with the same figures.
    p2 = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=900)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    assert p2.stdout.count("inputs unchanged") == 4
    r2 = check_report(out)
    assert all(s["reused"] for s in r2["stages"].values())
    assert r2["chosen"] == r["chosen"] and r2["stages"] == {
        k: dict(v, reused=True) for k, v in r["stages"].items()
    }

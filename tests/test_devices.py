"""One search, several devices (search/devices.py): budget lists, LUT cross-checks, reports."""

import json

import pytest
from search_fakes import fake_lut, fake_top1

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.search import devices as devices_lib
from elasticvit_tf.search import search_lib
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.search.pareto import dominates
from elasticvit_tf.space import get_space


def _lut(space, mode="fp32", target="local", threads=1, coef=1e-5, drop_kind=None):
    d = fake_lut(space, mode)
    d["provenance"] = {"target": target, "num_threads": threads}
    for m in d["models"].values():
        m["coef"] = [coef]
    if drop_kind:
        del d["models"][drop_kind]
    return d


@pytest.fixture
def luts(tmp_path):
    tiny = get_space("tiny")
    files = {
        "a": _lut(tiny),
        "b": _lut(tiny, target="adb:PIXEL7", threads=4, coef=2e-5),
        "b_same_name": _lut(tiny, coef=3e-5),
        "int8": _lut(tiny, "int8", target="adb:X"),
        "demo": _lut(get_space("demo"), target="adb:Y"),
        "no_head": _lut(tiny, target="adb:Z", drop_kind="head"),
    }
    out = {}
    for k, d in files.items():
        out[k] = str(tmp_path / f"{k}.json")
        with open(out[k], "w") as f:
            json.dump(d, f)
    return out


def test_parse_budget_lists():
    got = devices_lib.parse_budget_lists("3,5;8ms,12", 2)
    assert got == (LatencyBudgets((3.0, 5.0)), LatencyBudgets((8.0, 12.0)))
    assert devices_lib.parse_budget_lists(["3", "5;8", "12"], 2) == got  # absl's comma split
    assert devices_lib.parse_budget_lists("", 3) == (LatencyBudgets(),) * 3
    with pytest.raises(ValueError, match=r"3,5;8: 2 budget list\(s\) for 3 LUT\(s\)"):
        devices_lib.parse_budget_lists("3,5;8", 3)
    with pytest.raises(ValueError, match="expected numbers"):
        devices_lib.parse_budget_lists("3;x", 2)


def test_load_devices_names_and_bad_input(luts):
    tiny = get_space("tiny")
    b = [LatencyBudgets((5.0,)), LatencyBudgets((9.0,))]
    devs = devices_lib.load_devices(tiny, [luts["a"], luts["b"]], b)
    assert [d.name for d in devs] == ["local-t1", "adb-PIXEL7-t4"]
    devs = devices_lib.load_devices(tiny, [luts["a"], luts["b"]], b, names=["cpu", "pixel7"])
    assert [d.name for d in devs] == ["cpu", "pixel7"]
    bad = [
        ([luts["a"], luts["demo"]], b, (), r"demo.json.*space 'demo'.*requested space 'tiny'"),
        ([luts["a"], luts["int8"]], b, (), r"different modes"),
        ([luts["a"], luts["no_head"]], b, (), r"no_head.json.*no 'head' model"),
        ([luts["a"], luts["b_same_name"]], b, (), r"\['local-t1'\] repeat.*--device_names"),
        ([luts["a"], luts["b"]], b[:1], (), r"1 budget list\(s\) for 2 LUT\(s\)"),
        ([luts["a"], luts["b"]], b, ("x",), r"1 name\(s\) for 2 LUT\(s\)"),
        ([luts["a"], luts["b"]], b, ("a/b", "c"), r"cannot go into file names"),
        ([luts["a"], luts["b"]], [b[0], LatencyBudgets()], (), "a budget list for every LUT"),
    ]
    for paths, budgets, names, match in bad:
        with pytest.raises(ValueError, match=match):
            devices_lib.load_devices(tiny, paths, budgets, names)
    devs = devices_lib.load_devices(tiny, [luts["a"], luts["b"]], [LatencyBudgets((1.0,)), b[1]])
    with pytest.raises(ValueError, match=r"device 'local-t1'.*below the smallest subnet"):
        devices_lib.check_feasible(tiny, devs)


def test_multi_device_predictor_normalises_by_each_largest_budget(luts):
    tiny = get_space("tiny")
    b = [LatencyBudgets((5.0, 10.0)), LatencyBudgets((16.0, 20.0))]
    pred = devices_lib.MultiDevicePredictor(
        devices_lib.load_devices(tiny, [luts["a"], luts["b"]], b)
    )
    arch = tiny.min_arch()
    ms = pred.predict_all(arch)
    assert ms["adb-PIXEL7-t4"] > ms["local-t1"]
    assert pred.predict(arch) == pytest.approx(max(ms["local-t1"] / 10, ms["adb-PIXEL7-t4"] / 20))
    assert pred.budgets == LatencyBudgets((0.5, 0.8, 1.0))
    assert pred.mode == "fp32"


def test_one_search_reports_a_front_and_best_archs_per_device(luts, tmp_path):
    tiny = get_space("tiny")
    cfg = search_lib.SearchConfig(
        space="tiny",
        latency_lut=f"{luts['a']},{luts['b']}",
        device_budgets_ms=((6.0, 12.0), (12.0, 24.0)),
        device_names=("cpu", "pixel7"),
        max_trials=12,
        population=6,
        directory=str(tmp_path / "runs"),
        output_dir=str(tmp_path / "out"),
    )
    res = search_lib.run_search(cfg, evaluator=lambda a: fake_top1(tiny, a))
    assert res["trials"] == 12
    out = tmp_path / "out"
    pareto = json.loads((out / "pareto.json").read_text())
    assert set(pareto["devices"]) == {"cpu", "pixel7"}
    pts = pareto["points"]
    for name, budgets in (("cpu", (6, 12)), ("pixel7", (12, 24))):
        xy = [(p["latency_ms_by_device"][name], p["top1"]) for p in pts]
        for p, a in zip(pts, xy):
            assert p["on_front"][name] == (not any(dominates(o, a) for o in xy))
        assert all(p["latency_ms_by_device"][name] <= budgets[-1] for p in pts)
        for bud in budgets:
            key = f"{name}/{bud:g}"
            fits = [p for p in pts if p["latency_ms_by_device"][name] <= bud]
            if not fits:
                assert res["best"][key] is None
                continue
            best = json.loads((out / f"best_arch_{name}_{bud:g}.json").read_text())
            assert best["device"] == name and best["budget_ms"] == bud
            assert best["metrics"]["top1"] == max(p["top1"] for p in fits)
            assert best["metrics"]["latency_ms"] <= bud
            tiny.validate_arch(ArchConfig.from_dict(best["arch"]))
            assert res["best"][key]["latency_ms"] == best["metrics"]["latency_ms"]
    assert (out / "pareto.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Pareto front on cpu" in report and "Pareto front on pixel7" in report
    assert not list(out.glob("best_arch_6.json"))  # single-device names only for one LUT


def test_config_refuses_mixed_budget_forms(luts):
    with pytest.raises(ValueError, match="several LUTs take one budget list per LUT"):
        search_lib.SearchConfig(
            space="tiny", latency_lut=f"{luts['a']},{luts['b']}", latency_budgets_ms=(3.0,)
        )
    with pytest.raises(ValueError, match="need several LUTs"):
        search_lib.SearchConfig(space="tiny", latency_lut=luts["a"], device_budgets_ms=((3.0,),))


def test_search_command_line_round_trips_budget_lists(luts):
    from elasticvit_tf.search.search_main import command_line

    cfg = search_lib.SearchConfig(
        model_dir="m",
        latency_lut=f"{luts['a']},{luts['b']}",
        device_budgets_ms=((3.0, 5.0), (8.0, 12.5)),
        device_names=("cpu", "pixel7"),
    )
    cmd = command_line(cfg)
    assert "'--latency_budget_ms=3,5;8,12.5'" in cmd and "--device_names=cpu,pixel7" in cmd


@pytest.mark.slow
def test_binary_refuses_a_budget_list_count_that_does_not_match(luts, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "elasticvit_tf.search.search_main",
            f"--model_dir={tmp_path / 'model'}",
            f"--latency_lut={luts['a']},{luts['b']}",
            "--latency_budget_ms=3,5",
            f"--directory={tmp_path / 'runs'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    err = [x for x in r.stderr.splitlines() if x.startswith("elasticvit-search: error:")]
    assert len(err) == 1 and "1 budget list(s) for 2 LUT(s)" in err[0]
    assert not (tmp_path / "runs").exists()

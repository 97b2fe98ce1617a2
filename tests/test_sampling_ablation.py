"""Tests of the protocol helpers of benchmarks/sampling_ablation.py (no training)."""

import importlib.util
import json
import math
import os

import pytest

from elasticvit_tf.flops import count_flops
from elasticvit_tf.sampling.level_samplers import dominates
from elasticvit_tf.space import get_space

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "sampling_ablation.py")
_spec = importlib.util.spec_from_file_location("sampling_ablation", _PATH)
ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ab)


def test_evaluation_set_is_fixed_in_bin_and_flags_dominance():
    space = get_space("tiny")
    es = ab.evaluation_set(space, per_level=3, uniform_space=4, seed=5)
    assert es == ab.evaluation_set(space, per_level=3, uniform_space=4, seed=5)
    assert es != ab.evaluation_set(space, per_level=3, uniform_space=4, seed=6)
    assert [lv["level"] for lv in es["levels"]] == list(space.flops_levels)
    from elasticvit_tf.arch import ArchConfig

    for lv in es["levels"]:
        m = space.select_min_arch(lv["level"])
        first, rest = lv["archs"][0], lv["archs"][1:]
        assert first["key"] == m.key() and first["is_min"] and first["dominates_min"]
        assert len(rest) == 3 and len({e["key"] for e in lv["archs"]}) == 4
        for e in rest:
            a = ArchConfig.from_dict(e["arch"])
            lo, hi = lv["bin"]
            assert lo - 1e-6 <= count_flops(space, a) <= hi + 1e-6
            assert e["dominates_min"] == dominates(a, m) and not e["is_min"]
    assert len(es["uniform_space"]) == 4
    assert len(ab.eval_archs(es)) <= 4 * len(es["levels"]) + 4


def test_dominates():
    space = get_space("demo")
    lo, hi = space.min_arch(), space.max_arch()
    assert dominates(hi, lo) and dominates(lo, lo) and not dominates(lo, hi)


def _doc():
    levels = [
        {
            "level": 1.0,
            "bin": [1, 2],
            "archs": [{"key": "a", "dominates_min": True}, {"key": "b", "dominates_min": False}],
        },
        {"level": 2.0, "bin": [2, 3], "archs": [{"key": "c", "dominates_min": True}]},
    ]
    es = {"levels": levels, "uniform_space": [{"key": "u"}]}

    def run(sampler, seed, top1, search):
        return {
            "sampler": sampler,
            "seed": seed,
            "top1": top1,
            "search_top1": search,
            "grad_cos_step": 0.1 * (seed + 1),
            "grad_cos_slots": 0.2,
            "train_seconds": 10.0,
        }

    runs = {
        "uniform/seed0": run(
            "uniform", 0, {"a": 0.5, "b": 0.6, "c": 0.7, "u": 0.4}, {"a": 0.1, "b": 0.9, "c": 0.5}
        ),
        "uniform/seed1": run(
            "uniform", 1, {"a": 0.5, "b": 0.5, "c": 0.7, "u": 0.4}, {"a": 0.9, "b": 0.1, "c": 0.5}
        ),
        "elasticvit/seed0": run(
            "elasticvit",
            0,
            {"a": 0.6, "b": 0.6, "c": 0.6, "u": 0.3},
            {"a": 0.9, "b": 0.1, "c": 0.5},
        ),
    }
    protocol = {"samplers": ["uniform", "sandwich", "elasticvit"]}
    return {"protocol": protocol, "eval_set": es, "runs": runs}


def test_paired_differences_and_standard_errors():
    doc = _doc()
    p = ab.paired(doc["runs"], doc["eval_set"], "elasticvit")
    # seed 0 only (elasticvit has no seed 1): level 1 pairs a (+0.1) and b (0.0)
    assert p["1"]["all"]["n"] == 2 and p["1"]["all"]["mean"] == pytest.approx(0.05)
    assert p["1"]["all"]["se"] == pytest.approx(math.sqrt(0.005) / math.sqrt(2))
    assert p["1"]["dominating"] == {"mean": pytest.approx(0.1), "se": None, "n": 1}
    assert p["2"]["all"]["mean"] == pytest.approx(-0.1)
    sm = ab.summarize(doc)
    assert sm["samplers"] == ["uniform", "elasticvit"]  # sandwich has no run yet
    # best-of-level picks on the search split: seed0 uniform -> b (0.6), seed1 -> a (0.5)
    assert sm["levels"]["1"]["uniform"]["best_of_level"]["mean"] == pytest.approx(0.55)
    assert sm["levels"]["1"]["elasticvit"]["best_of_level"]["mean"] == pytest.approx(0.6)
    assert sm["uniform_space"]["elasticvit"]["mean"] == pytest.approx(0.3)
    assert sm["levels_at_least_uniform"] == {"elasticvit": 1}
    assert sm["diagnostics"]["uniform"]["grad_cos_consecutive_steps"]["mean"] == pytest.approx(0.15)
    text = ab.render(doc)
    assert "+5.00 ± 5.00" in text and "uniform over the space (secondary)" in text


def test_mean_se_edges():
    assert ab.mean_se([]) == {"mean": None, "se": None, "n": 0}
    assert ab.mean_se([2.0]) == {"mean": 2.0, "se": None, "n": 1}


def test_open_doc_keeps_runs_and_refuses_another_protocol(tmp_path):
    path = str(tmp_path / "r.json")
    doc = ab.open_doc(path, {"steps": 5}, {"levels": []})
    doc["runs"]["uniform/seed0"] = {"x": 1}
    ab.write_atomic(path, doc)
    assert ab.open_doc(path, {"steps": 5}, {"levels": []})["runs"] == {"uniform/seed0": {"x": 1}}
    with pytest.raises(ValueError, match="another protocol"):
        ab.open_doc(path, {"steps": 6}, {"levels": []})


def test_main_bad_input_exits_2(tmp_path, capsys):
    assert ab.main(["--report_only", "--out", str(tmp_path / "none.json")]) == 2
    assert ab.main(["--samplers", "elasticvit", "--out", str(tmp_path / "x.json")]) == 2
    assert ab.main(["--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "'uniform'" in err and "--steps=0" in err
    path = tmp_path / "done.json"
    path.write_text(json.dumps(_doc()))
    assert ab.main(["--report_only", "--out", str(path)]) == 0
    assert "Paired difference vs uniform" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_mode_trains_evaluates_and_resumes(tmp_path, capsys):
    out, work = str(tmp_path / "quick.json"), str(tmp_path / "work")
    args = ["--quick", "--steps", "8", "--samplers", "uniform,elasticvit"]
    assert ab.main(args + ["--out", out, "--work_dir", work]) == 0
    doc = json.loads(open(out).read())
    assert sorted(doc["runs"]) == ["elasticvit/seed0", "uniform/seed0"]
    n_archs = len(ab.eval_archs(doc["eval_set"]))
    for run in doc["runs"].values():
        assert len(run["top1"]) == n_archs and run["steps"] == 8
        assert sum(run["train_resolution_hist"].values()) == 8 * 4
    assert set(doc["paired"]) == {"elasticvit"}
    capsys.readouterr()
    # a rerun keeps the finished runs (nothing is trained again)
    assert ab.main(args + ["--out", out, "--work_dir", work]) == 0
    assert "done earlier, kept" in capsys.readouterr().out

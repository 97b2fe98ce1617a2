"""elasticvit-search (search/search_main.py) and search_lib.run_search: end to end and bad input."""

import json
import math
import os
import subprocess
import sys

import pytest
from search_fakes import fake_lut

from elasticvit_tf.search import search_lib
from elasticvit_tf.search.pareto import dominates
from elasticvit_tf.space import get_space


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny supernet model_dir (untrained weights, digits data) and LUTs."""
    from elasticvit_tf import data as data_lib
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.supernet import ElasticSupernet

    root = tmp_path_factory.mktemp("search_main")
    space = get_space("tiny")
    net = ElasticSupernet(space, 10, num_slots=1)
    md.ensure_built(net, space)
    data = data_lib.DataConfig(dataset="digits", image_size=24, search_size=64, augment="light")
    config = {"space": "tiny", "num_classes": 10, "num_slots": 1, "data": data.to_dict()}
    md.save_supernet(str(root / "model"), net, config)
    for name, sp, mode in (
        ("lut_fp32.json", space, "fp32"),
        ("lut_int8.json", space, "int8"),
        ("lut_demo.json", get_space("demo"), "fp32"),
    ):
        (root / name).write_text(json.dumps(fake_lut(sp, mode)))
    return root


def _cfg(root, **kw):
    base = dict(
        model_dir=str(root / "model"),
        latency_lut=str(root / "lut_fp32.json"),
        latency_mode="fp32",
        latency_budgets_ms=(20.0,),
        max_trials=4,
        population=4,
        calibration_batches=1,
        eval_batches=1,
        batch_size=16,
        directory=str(root / "runs"),
        project_name="bad",
    )
    base.update(kw)
    return search_lib.SearchConfig(**base)


def test_bad_inputs_have_clear_messages(model_dir, tmp_path):
    smallest = 3.93776  # fake LUT prediction of the tiny min arch (search_fakes.fake_lut)
    with pytest.raises(ValueError, match=r"below the smallest subnet's predicted latency 3.938"):
        search_lib.run_search(_cfg(model_dir, latency_budgets_ms=(1.0, smallest / 2)))
    with pytest.raises(ValueError, match=r"latency budget 2 ms is below the smallest"):
        search_lib.run_search(_cfg(model_dir, latency_budgets_ms=(2.0, 10 * smallest)))
    with pytest.raises(ValueError, match=r"lut_demo.json.*space 'demo'.*requested space 'tiny'"):
        search_lib.run_search(_cfg(model_dir, latency_lut=str(model_dir / "lut_demo.json")))
    with pytest.raises(ValueError, match=r"holds mode 'int8'.*'fp32' was requested"):
        search_lib.run_search(_cfg(model_dir, latency_lut=str(model_dir / "lut_int8.json")))
    with pytest.raises(ValueError, match="--latency_lut=.*no such file"):
        search_lib.run_search(_cfg(model_dir, latency_lut=str(tmp_path / "nope.json")))
    with pytest.raises(ValueError, match="--model_dir=.*no such directory"):
        search_lib.run_search(_cfg(model_dir, model_dir=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json does not exist"):
        search_lib.run_search(_cfg(model_dir, model_dir=str(tmp_path / "empty")))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json is unreadable"):
        search_lib.run_search(_cfg(model_dir, model_dir=str(tmp_path / "corrupt")))
    with pytest.raises(ValueError, match="holds space 'tiny'.*expected 'demo'"):
        search_lib.run_search(_cfg(model_dir, space="demo"))
    with pytest.raises(ValueError, match="needs a latency predictor"):
        search_lib.run_search(_cfg(model_dir, latency_lut=None))
    with pytest.raises(ValueError, match="does not overlap the FLOPs"):
        search_lib.run_search(_cfg(model_dir, mflops_range=(50, 60)))
    with pytest.raises(ValueError, match="oracle='grid'"):
        _cfg(model_dir, oracle="grid")
    assert not (model_dir / "runs").exists()  # nothing started


def _run_binary(args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERASTUNER_ORACLE_IP", None)
    return subprocess.run(
        [sys.executable, "-m", "elasticvit_tf.search.search_main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_binary_exit_code_2_on_infeasible_budget(model_dir):
    r = _run_binary(
        [
            f"--model_dir={model_dir / 'model'}",
            f"--latency_lut={model_dir / 'lut_fp32.json'}",
            "--latency_budget_ms=1",
            f"--directory={model_dir / 'runs_bad'}",
        ]
    )
    assert r.returncode == 2, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("elasticvit-search: error:")]
    assert len(err) == 1 and "below the smallest subnet's predicted latency" in err[0]


@pytest.mark.slow
def test_end_to_end_search_on_a_tiny_supernet_writes_all_outputs(model_dir, tmp_path):
    flagfile = tmp_path / "search.flags"
    flagfile.write_text(
        "\n".join(
            [
                f"--model_dir={model_dir / 'model'}",
                f"--latency_lut={model_dir / 'lut_fp32.json'}",
                "--latency_mode=fp32",
                "--latency_budget_ms=9,15",
                "--max_trials=10",
                "--population=4",
                "--calibration_batches=2",
                "--eval_batches=2",
                "--batch_size=16",
                f"--directory={tmp_path / 'runs'}",
                "--project_name=e2e",
                f"--output_dir={tmp_path / 'out'}",
            ]
        )
    )
    r = _run_binary([f"--flagfile={flagfile}"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert summary["trials"] == 10 and summary["evaluations"] == 10
    out = tmp_path / "out"
    for name in ("pareto.json", "pareto.png", "report.md", "best_arch_9.json", "best_arch_15.json"):
        assert (out / name).is_file(), name
    pareto = json.loads((out / "pareto.json").read_text())
    pts = pareto["points"]
    assert len(pts) == 10 and pareto["latency_mode"] == "fp32"
    for p in pts:
        assert 0.0 <= p["top1"] <= 1.0 and p["latency_ms"] <= 15.0 and math.isfinite(p["mflops"])
    xy = [(p["latency_ms"], p["top1"]) for p in pts]
    for p, a in zip(pts, xy):
        dominated = any(dominates(b, a) for b in xy)
        assert p["on_front"] == (not dominated)
    for budget in (9, 15):
        best = json.loads((out / f"best_arch_{budget}.json").read_text())
        fits = [p for p in pts if p["latency_ms"] <= budget]
        assert best["metrics"]["top1"] == max(p["top1"] for p in fits)
        assert best["metrics"]["latency_ms"] <= budget
        get_space("tiny").validate_arch(
            __import__("elasticvit_tf.arch", fromlist=["x"]).ArchConfig.from_dict(best["arch"])
        )
    assert "Pareto front" in (out / "report.md").read_text()
    assert (tmp_path / "runs" / "e2e" / "search_config.json").is_file()
    cache = json.loads((tmp_path / "runs" / "e2e" / "eval_cache_tuner0.json").read_text())
    assert len(cache["results"]) == 10


def test_memory_banks_seed_the_initial_population(tmp_path):
    import numpy as np
    import tensorflow as tf
    from search_fakes import FakePredictor, fake_top1

    from elasticvit_tf import model_dir as md

    space = get_space("tiny")
    rng = np.random.default_rng(4)
    banks = [[[space.sample(rng).to_dict(), -float(i + 3 * j)] for i in range(2)] for j in range(3)]
    banks[1].append([get_space("demo").min_arch().to_dict(), 0.0])  # another space: skipped
    mdir = tmp_path / "model"
    md.write_config(str(mdir), md.space_config(space))
    state = tf.Variable(json.dumps({"sampler": "elasticvit", "banks": banks}), dtype=tf.string)
    md.checkpoint_manager(md.checkpoint_dir(str(mdir)), tf.train.Checkpoint(sampler=state)).save()
    found = search_lib.memory_bank_archs(str(mdir), space)
    want = [e[0] for e in sorted((e for b in banks for e in b[:2]), key=lambda e: -e[1])]
    assert [a.to_dict() for a in found] == want  # best score first, foreign arch dropped

    cfg = search_lib.SearchConfig(
        model_dir=str(mdir),
        latency_budgets_ms=(100.0,),
        latency_lut="unused-with-an-injected-predictor",
        max_trials=8,
        population=8,
        directory=str(tmp_path / "runs"),
    )
    result = search_lib.run_search(
        cfg, evaluator=lambda a: fake_top1(space, a), predictor=FakePredictor(space)
    )
    assert result["trials"] == 8
    pareto = json.loads((tmp_path / "runs" / "elasticvit_search" / "pareto.json").read_text())
    first = [p["arch"] for p in sorted(pareto["points"], key=lambda p: p["trial_id"])][:6]
    assert first == want


def test_completed_trials_counts_finished_trial_files(tmp_path):
    assert search_lib.completed_trials(str(tmp_path / "missing")) == 0
    for name, text in (
        ("trial_0", '{"status": "COMPLETED"}'),
        ("trial_1", '{"status": "RUNNING"}'),
        ("trial_2", "{not json"),
        ("trial_3", '{"status": "COMPLETED"}'),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trial.json").write_text(text)
    (tmp_path / "oracle.json").write_text("{}")
    assert search_lib.completed_trials(str(tmp_path)) == 2


def test_budget_searches_run_a_fallback_per_unmet_budget(tmp_path):
    """A budget that no trial of the first search fits gets its own constrained search; the
    front is recomputed over all trials."""
    from elasticvit_tf.search.report import best_for_budget

    space = get_space("tiny")
    archs = [space.min_arch(), space.max_arch()]
    found = {  # project -> (latency, top1, arch) of its trials
        "p": [(5.0, 0.6, archs[0]), (8.0, 0.7, archs[1]), (9.0, 0.65, archs[1])],
        "p_3ms": [(2.5, 0.5, archs[0])],
    }
    calls = []

    def fake_search(c):
        calls.append(c)
        project = os.path.join(c.directory, c.project_name)
        os.makedirs(project, exist_ok=True)
        records = [
            {
                "trial_id": str(i),
                "arch_key": a.key(),
                "arch": a.to_dict(),
                "top1": t,
                "latency_ms": ms,
                "mflops": 1.0,
            }
            for i, (ms, t, a) in enumerate(found[c.project_name])
        ]
        path = os.path.join(project, "pareto.json")
        with open(path, "w") as f:
            json.dump({"points": records}, f)
        return {
            "trials": len(records),
            "stop_reason": "max_trials",
            "best": {b: best_for_budget(records, b) for b in c.latency_budgets_ms},
            "paths": {"pareto.json": path},
            "project_dir": project,
        }

    cfg = search_lib.SearchConfig(
        space="tiny",
        latency_budgets_ms=(3.0, 10.0),
        latency_mode="fp32",
        max_trials=8,
        population=8,
        directory=str(tmp_path),
        project_name="p",
    )
    res = search_lib.run_budget_searches(cfg, search=fake_search, log=lambda s: None)
    assert [c.project_name for c in calls] == ["p", "p_3ms"]
    sub = calls[1]
    assert sub.latency_budgets_ms.ms == (3.0,) and sub.max_trials == 3 and sub.population == 3
    assert sub.directory == os.path.join(str(tmp_path), "p")
    assert res["extra_configs"] == [sub.to_dict()]
    assert res["trials"] == 4
    assert res["best"]["10"]["trial_id"] == "1" and res["best"]["3"]["trial_id"] == "3ms/0"
    assert res["best"]["3"]["params_m"] > 0
    on_front = {p["trial_id"] for p in res["points"] if p["on_front"]}
    assert on_front == {"3ms/0", "0", "1"} and set(res["front"]) == on_front
    assert os.path.isfile(res["paths"]["pareto_all.png"])
    assert res["paths"]["3ms/pareto.json"].endswith(os.path.join("p_3ms", "pareto.json"))

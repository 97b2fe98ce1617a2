"""Int8-aware choice (export/rerank.py): candidates from a search's pareto.json, each exported
in int8 and measured, the best int8 one within the measured budget kept."""

import json
import os

import pytest

from elasticvit_tf.export import export_lib, rerank


def _points(space, archs, top1s, ms):
    from elasticvit_tf.flops import count_flops

    return {
        "points": [
            {
                "trial_id": f"t{i}",
                "arch": a.to_dict(),
                "arch_key": a.key(),
                "top1": t,
                "latency_ms": m,
                "mflops": count_flops(space, a),
            }
            for i, (a, t, m) in enumerate(zip(archs, top1s, ms))
        ]
    }


def test_candidates_and_choose(tmp_path):
    from elasticvit_tf.space import get_space

    space = get_space("tiny")
    archs = [space.min_arch(), space.max_arch(), space.min_arch()]
    path = tmp_path / "pareto.json"
    path.write_text(json.dumps(_points(space, archs, [0.5, 0.9, 0.7], [1.0, 5.0, 2.0])))
    got = rerank.candidates(str(path), 3.0, 5)  # the max arch (5 ms) does not fit
    assert [c["float_top1"] for c in got] == [0.7, 0.5]
    assert rerank.candidates(str(path), 10.0, 1)[0]["float_top1"] == 0.9
    with pytest.raises(ValueError, match="no point of .* fits \\(its fastest is predicted at 1 ms"):
        rerank.candidates(str(path), 0.5, 5)
    bad = tmp_path / "bad.json"
    bad.write_text('{"front": []}')
    with pytest.raises(ValueError, match="not a search's pareto.json"):
        rerank.candidates(str(bad), 3.0, 5)

    rows = [
        {"int8_top1": 0.60, "measured_ms": 2.0},
        {"int8_top1": 0.70, "measured_ms": 3.5},  # best int8 but measured over the budget
        {"int8_top1": 0.65, "measured_ms": 2.9},
    ]
    assert rerank.choose(rows, 3.0) == (2, True)
    assert rerank.choose(rows, 1.0) == (0, False)  # none fits: the fastest


def test_rerank_settings_are_checked(tmp_path):
    base = dict(output_dir=str(tmp_path / "o"), model_dir="m", rerank_budget_ms=3.0)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="--quantize must include int8"):
        export_lib.ExportConfig(**base, rerank_from=missing, quantize=("float32",)).validate()
    with pytest.raises(ValueError, match="needs --model_dir and no --arch"):
        export_lib.ExportConfig(
            **base, rerank_from=missing, arch="min", quantize=("int8",)
        ).validate()
    with pytest.raises(ValueError, match="no such file; expected a search's pareto.json"):
        export_lib.ExportConfig(**base, rerank_from=missing, quantize=("int8",)).validate()
    cfg = dict(base, rerank_budget_ms=0.0)
    with pytest.raises(ValueError, match="--rerank_budget_ms=0.0; expected a latency budget"):
        export_lib.ExportConfig(**cfg, rerank_from=missing, quantize=("int8",)).validate()
    with pytest.raises(ValueError, match="--verify_split=train"):
        export_lib.ExportConfig(output_dir="o", keras_model="k", verify_split="train").validate()


@pytest.mark.slow
def test_rerank_exports_candidates_and_keeps_the_best_int8(tmp_path):
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.space import get_space

    space = get_space("tiny")
    net = md.build_supernet(space, {"num_classes": 10})
    config = {
        "num_classes": 10,
        "data": {"dataset": "digits", "image_size": 16, "search_size": 200},
        "split_seed": 0,
    }
    model_dir = str(tmp_path / "model_dir")
    md.save_supernet(model_dir, net, config)
    archs = [space.min_arch(), space.max_arch(), space.max_arch()]
    pareto = tmp_path / "pareto.json"
    pareto.write_text(json.dumps(_points(space, archs, [0.4, 0.8, 0.9], [1.0, 2.0, 50.0])))
    out = str(tmp_path / "export")
    cfg = export_lib.ExportConfig(
        output_dir=out,
        model_dir=model_dir,
        quantize=("int8",),
        rerank_from=str(pareto),
        rerank_budget_ms=40.0,  # drops the 50 ms point; any measured tiny model fits
        rerank_top_k=2,
        verify_images=64,
        max_accuracy_drop=100.0,  # untrained weights: the int8 drop is noise here
        representative_steps=8,
        calibration_batches=2,
        warmup_runs=1,
        benchmark_runs=3,
    )
    doc = rerank.run_rerank(cfg, log=lambda m: None)
    rows = doc["candidates"]
    assert [r["arch_key"] for r in rows] == [archs[1].key(), archs[0].key()]
    assert doc["verify_split"] == "search" and doc["seconds"] > 0
    assert doc["winner_fits_budget"]
    assert rows[doc["winner"]]["int8_top1"] == max(r["int8_top1"] for r in rows)
    for r in rows:
        assert 0.0 <= r["int8_top1"] <= 1.0 and r["measured_ms"] > 0
    files = set(os.listdir(out))
    assert {"model_int8.tflite", "export_report.json", "rerank.json", "rerank.md"} <= files
    report = json.loads(open(os.path.join(out, "export_report.json")).read())
    assert report["arch_key"] == rows[doc["winner"]]["arch_key"]
    assert report["verify_split"] == "search"
    assert len(os.listdir(os.path.join(out, rerank.CANDIDATES_DIR))) == 2
    assert "**chosen**" in open(os.path.join(out, "rerank.md")).read()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export.rerank_")]

"""Tests for elasticvit_tf.pipeline.stages: stage bookkeeping and the stage adapters."""

import os

from elasticvit_tf.pipeline import stages
from elasticvit_tf.pipeline.demo_config import FULL_PLAN


def test_fingerprint_stable_and_sensitive():
    a = stages.fingerprint({"x": 1, "y": [1, 2]})
    assert a == stages.fingerprint({"y": [1, 2], "x": 1})
    assert a != stages.fingerprint({"x": 2, "y": [1, 2]})


def test_stage_reuse_and_rerun(tmp_path):
    layout = stages.Layout(str(tmp_path))
    calls = []

    def fn():
        calls.append(1)
        os.makedirs(layout.lut_dir, exist_ok=True)
        path = os.path.join(layout.lut_dir, "x.json")
        open(path, "w").write("{}")
        return {"value": len(calls), "files": [path]}

    r1, _, reused1 = stages.run_stage(layout, "lut", "fp1", True, fn, log=lambda s: None)
    r2, _, reused2 = stages.run_stage(layout, "lut", "fp1", True, fn, log=lambda s: None)
    assert (r1["value"], reused1, r2["value"], reused2) == (1, False, 1, True)
    # Changed inputs: rerun, old outputs removed first.
    r3, _, reused3 = stages.run_stage(layout, "lut", "fp2", True, fn, log=lambda s: None)
    assert (r3["value"], reused3) == (2, False)
    # A missing output invalidates the record.
    os.remove(r3["files"][0])
    r4, _, reused4 = stages.run_stage(layout, "lut", "fp2", True, fn, log=lambda s: None)
    assert (r4["value"], reused4) == (3, False)
    # resume=False always reruns.
    r5, _, reused5 = stages.run_stage(layout, "lut", "fp2", False, fn, log=lambda s: None)
    assert (r5["value"], reused5) == (4, False)


def test_run_train_adapts_the_plan(monkeypatch, tmp_path):
    from elasticvit_tf.train import train_lib

    calls = []

    def fake_train(cfg, time_box=None, log=print):
        calls.append((cfg, time_box))
        return {"step": cfg.steps or 0}

    monkeypatch.setattr(train_lib, "train", fake_train)
    tc = train_lib.TrainConfig.demo(str(tmp_path))
    # A time box from the plan's minutes, the recipe's steps as the upper bound.
    stages.run_train(tc, dict(FULL_PLAN, train_minutes=1.5), log=lambda s: None)
    assert calls[-1] == (tc, train_lib.TimeBox(90.0, probe_steps=FULL_PLAN["probe_steps"]))
    # Explicit steps: no time box, exactly those steps, the report's planning figures.
    res = stages.run_train(tc, dict(FULL_PLAN, train_steps=77), log=lambda s: None)
    assert calls[-1][0].steps == 77 and calls[-1][1] is None
    assert res["planned_steps"] == res["target_steps"] == 77 and res["probe_steps"] == 0
    assert res["time_boxed"] is False and res["time_box_s"] is None

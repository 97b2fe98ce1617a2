"""train_lib: TrainConfig, validation, and a tiny-space run on digits (one device)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from elasticvit_tf import model_dir as md
from elasticvit_tf.train import train_lib
from elasticvit_tf.train.train_lib import TrainConfig


def test_config_roundtrip_and_unknown_keys():
    cfg = TrainConfig.demo("/tmp/x", epochs=2)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.space == "demo" and cfg.dataset == "fashion_mnist" and cfg.epochs == 2
    # The demo trains with the official sampler (3 level subnets + the level's min subnet).
    assert cfg.sampler == "elasticvit" and cfg.num_subnets == 4
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"model_dir": "x", "learning_rate": 1})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model_dir", "", "model_dir is required"),
        ("sampler", "greedy", "unknown sampler 'greedy'"),
        ("strategy", "tpu", "unknown strategy 'tpu'"),
        ("batch_size", 0, "batch_size=0"),
        ("steps", 0, "steps=0"),
        ("eval_split", "train", "eval_split='train'"),
        ("ema_decay", 1.0, "ema_decay=1.0"),
        ("space", "huge", "unknown space 'huge'"),
    ],
)
def test_validate_config(field, value, message):
    cfg = dataclasses.replace(TrainConfig(model_dir="/tmp/x"), **{field: value})
    with pytest.raises(ValueError, match=message):
        train_lib.validate_config(cfg)


def test_make_strategy_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        train_lib.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        train_lib.make_strategy("auto")


def test_time_box_plans_steps_from_the_probe(monkeypatch, tmp_path):
    calls = []

    def fake_train(cfg, extra_callbacks=()):
        calls.append(cfg)
        return {
            "step": cfg.steps,
            "resumed_from_step": calls[-2].steps if len(calls) > 1 else 0,
            "train_seconds": 5.0,
            "min_top1": 0.5,
            "max_top1": 0.6,
        }

    monkeypatch.setattr(train_lib, "_train", fake_train)
    monkeypatch.setattr(train_lib, "total_steps", lambda tc: 1000)
    # First logging window holds the tracing (ignored); steady 256 images/s = 2 steps/s.
    curve = {"throughput_images_per_s": [(10, 1.0), (20, 256.0), (30, 256.0)]}
    monkeypatch.setattr(md, "read_training_curves", lambda d: curve)
    tc = TrainConfig.demo(str(tmp_path), batch_size=128)
    box = train_lib.TimeBox(60.0)
    res = train_lib.train(tc, time_box=box, log=lambda s: None)
    assert [c.steps for c in calls][0] == 40  # the probe, inside the 100-step warm-up
    assert calls[0].eval_batches == 1 and calls[0].warmup_steps == 39
    # Same LR slope as the full 100-step warm-up: lr' - warmup_lr = (lr - warmup_lr) * 39/100.
    assert calls[0].lr - tc.warmup_lr == pytest.approx((tc.lr - tc.warmup_lr) * 0.39)
    assert calls[1].warmup_steps == 100 and calls[1].lr == tc.lr
    # 60 s box - 30 s final evaluation (the fake probe took ~0 s) at 2 steps/s planned with
    # the 0.94 rate margin: 40 + int(30 * 2 * 0.94) = 96.
    assert box.rate_margin == 0.94 and box.final_eval_seconds == 30.0
    # The main run is configured for the target; TimeBoxReplan holds it to the plan.
    assert calls[1].steps == 1000 and res["initial_planned_steps"] == res["planned_steps"]
    assert 93 <= res["planned_steps"] <= 96  # minus the test's own (real) elapsed time
    assert res["probe_steps_per_s"] == pytest.approx(2.0)
    assert res["target_steps"] == 1000 and res["time_boxed"] is True
    assert res["time_box_s"] == 60.0


def test_time_box_without_room_for_a_probe_runs_the_config(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(
        train_lib, "_train", lambda cfg, extra_callbacks=(): calls.append(cfg) or {}
    )
    monkeypatch.setattr(train_lib, "total_steps", lambda tc: 1000)
    tc = TrainConfig.demo(str(tmp_path), warmup_steps=0)
    res = train_lib.train(tc, time_box=train_lib.TimeBox(60.0), log=lambda s: None)
    assert [c.steps for c in calls] == [1000]
    assert res["probe_steps"] == 0 and res["time_box_s"] is None and res["time_boxed"] is False


def test_plain_train_runs_the_config_as_given(monkeypatch, tmp_path):
    """Without a time box ``train`` runs the config unchanged (no probe, no planning)."""
    calls = []
    monkeypatch.setattr(
        train_lib, "_train", lambda cfg, extra_callbacks=(): calls.append(cfg) or {}
    )
    tc = TrainConfig.demo(str(tmp_path), steps=7)
    assert train_lib.train(tc) == {}
    assert calls == [tc]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seconds": 0}, "seconds=0"),
        ({"seconds": 10, "probe_steps": -1}, "probe_steps=-1"),
        ({"seconds": 10, "rate_margin": 1.5}, "rate_margin=1.5"),
    ],
)
def test_time_box_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_lib.TimeBox(**kwargs)


@pytest.mark.slow
def test_tiny_digits_one_device_better_than_chance(tmp_path):
    out = str(tmp_path / "run")
    cfg = TrainConfig(
        model_dir=out,
        space="tiny",
        dataset="digits",
        sampler="elasticvit",
        strategy="one_device",
        steps=150,
        steps_per_epoch=50,
        batch_size=64,
        lr=5e-3,
        lr_reference_batch=0,
        warmup_steps=10,
        min_lr=1e-4,
        ema_decay=0.99,
        ema_warmup=True,
        label_smoothing=0.0,
        checkpoint_every=100,
        eval_every=0,
        calib_batches=5,
        search_size=100,
        verbose=0,
    )
    r = train_lib.train(cfg)
    assert r["step"] == 150 and r["trace_count"] == 1  # archs change every step: one trace
    # Chance is 10 %: the global min and max subnets (EMA, BN recalibrated) on the held-out
    # digits test split (360 images).
    assert r["min_top1"] >= 0.5 and r["max_top1"] >= 0.5, r

    # The model_dir contract: config, checkpoints (100 and the final 150), TensorBoard, eval.
    config = md.read_config(out)
    assert config["space"] == "tiny" and config["num_classes"] == 10
    assert config["data"]["dataset"] == "digits" and config["total_steps"] == 150
    assert md.latest_checkpoint(out).endswith("ckpt-150")
    assert os.listdir(os.path.join(out, "tensorboard", "train"))
    with open(md.eval_path(out)) as f:
        assert json.load(f)["latest"]["min_top1"] == pytest.approx(r["min_top1"])

    # load_supernet reads it back (EMA weights by default, live weights on request).
    net, _ = md.load_supernet(out, "tiny")
    live, _ = md.load_supernet(out, "tiny", use_ema=False)
    a = [v.numpy() for v in md.ema_source_variables(net)]
    b = [v.numpy() for v in md.ema_source_variables(live)]
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))

    # Running again with the same config resumes and has nothing left to do.
    again = train_lib.train(cfg)
    assert again["resumed_from_step"] == 150 and again["step"] == 150


def test_time_box_replan_follows_the_measured_rate(monkeypatch):
    """A busy probe planned 100 steps; the run then measures 4 steps/s with 100 s left: the
    plan grows (LR schedule re-set in place) and the run stops exactly at the new plan."""
    import types

    import tensorflow as tf

    from elasticvit_tf.train import optim

    clock = {"t": 0.0}
    monkeypatch.setattr(train_lib.time, "monotonic", lambda: clock["t"])
    schedule = optim.WarmupCosine(1.0, 1000, warmup_steps=10)
    opt = types.SimpleNamespace(iterations=tf.Variable(0, dtype=tf.int64), _learning_rate=schedule)
    model = types.SimpleNamespace(optimizer=opt, stop_training=False)
    logs = []
    cb = train_lib.TimeBoxReplan(100.0, 100, 1000, 1.0, 20, log=logs.append)
    cb.set_model(model)
    cb.on_train_begin()
    assert schedule.total_steps == 100 and float(schedule(100)) == pytest.approx(0.0, abs=1e-6)
    while not model.stop_training:
        opt.iterations.assign_add(1)
        clock["t"] += 0.25
        cb.on_train_batch_end(0)
    # Window steps 1..21 (5 s) at 4 steps/s; at t = 5.25 s: 21 + int(94.75 * 4) = 400 steps.
    assert cb.replans[0]["planned_steps"] == 400 and cb.planned >= 390
    assert int(opt.iterations.numpy()) == cb.planned == schedule.total_steps
    assert float(schedule(cb.planned)) == pytest.approx(0.0, abs=1e-6)
    assert logs and "re-plan" in logs[0]

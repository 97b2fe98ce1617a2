"""Tests for elasticvit_tf.pipeline.demo_config: DemoConfig, its plans, its command line."""

import shlex

import pytest

from elasticvit_tf.pipeline import demo_config


def test_demo_config_plan_overrides():
    plan = demo_config.DemoConfig(quick=True, max_trials=3).plan()
    assert plan["max_trials"] == 3
    assert plan["train_steps"] == demo_config.QUICK_PLAN["train_steps"]
    full = demo_config.DemoConfig(train_minutes=2.5).plan()
    assert full["train_minutes"] == 2.5 and full["train_steps"] is None
    # An explicit time box replaces the quick plan's fixed step count; explicit steps win.
    assert demo_config.DemoConfig(quick=True, train_minutes=1.0).plan()["train_steps"] is None
    both = demo_config.DemoConfig(quick=True, train_minutes=1.0, train_steps=7).plan()
    assert both["train_steps"] == 7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budgets_ms": (1.0, -2.0)}, r"budgets_ms: expected positive milliseconds, received -2"),
        ({"train_steps": 0}, r"train_steps=0: expected a positive integer"),
        ({"max_trials": 1.5}, r"max_trials=1.5: expected a positive integer"),
        ({"train_minutes": 0}, r"train_minutes=0: expected a positive number"),
        ({"output_dir": ""}, r"output_dir: expected a directory path"),
    ],
)
def test_demo_config_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo_config.DemoConfig(**kwargs)


def test_demo_command_lists_non_default_flags(tmp_path):
    cfg = demo_config.DemoConfig(
        output_dir="runs/x", train_steps=300, lut_clock="cpu", budgets_ms=(1, 2.5)
    )
    cmd = shlex.split(demo_config.command_line(cfg))
    assert cmd[0] == "elasticvit-demo"
    assert sorted(cmd[1:]) == sorted(
        ["--output_dir=runs/x", "--train_steps=300", "--lut_clock=cpu", "--budgets_ms=1,2.5"]
    )

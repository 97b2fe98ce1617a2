"""Tests for elasticvit_tf.cli: command lines rendered from settings."""

import shlex

from elasticvit_tf import cli


def test_command_quotes_and_booleans():
    cmd = cli.command("x", {"a": "b c", "flag": True, "off": False, "skip": None})
    assert shlex.split(cmd) == ["x", "--a=b c", "--flag", "--nooff"]


def test_command_leaves_defaults_out_but_keeps_always():
    cmd = cli.command(
        "x",
        {"out": "o", "n": 3, "lr": 0.004, "ms": (1.0, 2.5), "kw": {"b": 1, "a": 2}},
        defaults={"out": "o", "n": 3, "lr": 0.001, "ms": [1, 2.5], "kw": {}},
        always=("out",),
    )
    assert shlex.split(cmd) == ["x", "--out=o", "--lr=0.004", '--kw={"a": 2, "b": 1}']

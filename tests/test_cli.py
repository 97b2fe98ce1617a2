"""Tests for elasticvit_tf.cli: command lines rendered from settings, and how binaries run
(exit codes, flag errors, SIGTERM, output checks, quiet start)."""

import os
import shlex
import signal
import subprocess
import sys

import pytest

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


def test_values_from_flags_maps_fields_and_parameters_by_name():
    import dataclasses

    from absl import flags as absl_flags

    fv = absl_flags.FlagValues()
    absl_flags.DEFINE_integer("steps", 10, "", flag_values=fv)
    absl_flags.DEFINE_string("out", "o", "", flag_values=fv)
    absl_flags.DEFINE_bool("unrelated", False, "", flag_values=fv)
    fv(["prog", "--steps=3"])

    @dataclasses.dataclass
    class Config:
        steps: int = 1
        out: str = ""
        no_flag: float = 0.5

    assert cli.values_from_flags(Config, fv) == {"steps": 3, "out": "o"}
    assert cli.values_from_flags(Config, fv, only_present=True) == {"steps": 3}
    assert cli.values_from_flags(Config, fv, only_present=True, keep=("out",)) == {
        "steps": 3,
        "out": "o",
    }

    def build(space, out="x", steps=2, log=print):
        return space

    assert cli.values_from_flags(build, fv) == {"out": "o", "steps": 3}


# ------------------------------------------------------------------------------- running
def test_check_output_dir_refuses_files_and_uncreatable_paths_writing_nothing(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    for bad, want in (
        (str(f), "a_file is a file"),
        (str(f / "sub"), "a_file is a file"),
        ("/proc/elasticvit_nope/x", "cannot be created"),
        ("", "is empty"),
    ):
        with pytest.raises(cli.UsageError, match=want):
            cli.check_output_dir(bad, "model_dir")
    fresh = tmp_path / "a" / "b" / "c"
    cli.check_output_dir(str(fresh))
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # probe directories removed again
    (tmp_path / "d").mkdir()
    cli.check_output_dir(str(tmp_path / "d"))
    assert os.listdir(tmp_path / "d") == []


def test_execute_maps_outcomes_to_exit_codes(capsys):
    def bad(argv):
        raise ValueError("--x=3: expected\nan even number")

    def bug(argv):
        raise RuntimeError("boom")

    def term(argv):
        raise cli.Terminated("checkpoint written")

    assert cli.execute("b", lambda argv: None, ["b"]) == 0
    assert cli.execute("b", lambda argv: 0, ["b"]) == 0
    assert cli.execute("b", bad, ["b"]) == 2
    assert capsys.readouterr().err == "b: error: --x=3: expected an even number\n"
    assert cli.execute("b", bug, ["b"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "internal error" in err
    assert cli.execute("b", term, ["b"]) == 143
    assert capsys.readouterr().err == "b: terminated by SIGTERM: checkpoint written\n"


def test_sigterm_outside_and_inside_deferred_blocks(capsys):
    def main(argv):
        with cli.deferred_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            assert cli.stop_requested()  # deferred: only a request, the loop goes on
        os.kill(os.getpid(), signal.SIGTERM)  # outside: stops at once
        raise AssertionError("not reached")

    before = signal.getsignal(signal.SIGTERM)
    assert cli.execute("b", main, ["b"]) == 143
    assert signal.getsignal(signal.SIGTERM) == before
    assert cli.execute("b", lambda argv: int(cli.stop_requested()), ["b"]) == 0


def test_flag_errors_exit_2_with_one_line(capsys):
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_integer("steps_cli_test", 1, "n", flag_values=fv)
    old, flags.FLAGS = flags.FLAGS, fv
    try:
        with pytest.raises(SystemExit) as e:
            cli.parse_flags("b", ["b", "--steps_cli_test=abc"])
    finally:
        flags.FLAGS = old
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


BINARY_MODULES = [
    "elasticvit_tf.info_main",
    "elasticvit_tf.convert_main",
    "elasticvit_tf.train.train_main",
    "elasticvit_tf.export.lut_main",
    "elasticvit_tf.export.export_main",
    "elasticvit_tf.search.search_main",
    "elasticvit_tf.pipeline.demo_main",
]


def test_binary_modules_import_without_tensorflow():
    """The console scripts must reach ``cli.run`` (which sets TF's logging) before TF loads."""
    code = "import sys\n" + "\n".join(f"import {m}" for m in BINARY_MODULES)
    code += "\nassert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


STARTUP_NOISE = ("cudart_stub", "cuda_", "oneDNN", "cpu_feature_guard", "absl::InitializeLog")


@pytest.mark.slow
@pytest.mark.parametrize(
    "binary, args",
    [
        ("elasticvit-info", ["--arch=min", "--space=tiny"]),
        ("elasticvit-convert", ["--checkpoint=/nonexistent.pth", "--model_dir=/tmp/x_never"]),
        ("elasticvit-lut", ["--space=huge"]),
        ("elasticvit-train", ["--model_dir=/tmp/x_never", "--dataset=nope"]),
    ],
)
def test_quiet_start(binary, args):
    """A binary prints none of TensorFlow's start-up lines (ELASTICVIT_TF_LOGS=1 shows them)."""
    exe = os.path.join(os.path.dirname(sys.executable), binary)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "ELASTICVIT"))}
    proc = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 2), proc.stderr
    assert not [n for n in STARTUP_NOISE if n in proc.stderr], proc.stderr
    if proc.returncode == 2:
        assert proc.stderr.count("\n") == 1, proc.stderr


def test_elasticvit_tf_logs_turns_the_quiet_start_off(monkeypatch):
    monkeypatch.setenv(cli.LOGS_ENV, "1")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert cli.verbose_logs()
    cli.quiet_tensorflow()
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    monkeypatch.setenv(cli.LOGS_ENV, "0")
    assert not cli.verbose_logs()

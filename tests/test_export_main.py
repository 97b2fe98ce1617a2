"""Tests of export/export_main.py (elasticvit-export): flags -> config -> command line, errors."""

import os
import shlex
import subprocess
import sys

from elasticvit_tf.export import export_main
from elasticvit_tf.export.export_lib import ExportConfig

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

# Parses argv with the binary's flags in a fresh process (absl flags are process-global).
_PARSE = """
import sys
from absl import flags
from elasticvit_tf.export import export_main
export_main.define_flags()
flags.FLAGS(["elasticvit-export", *sys.argv[1:]])
print(repr(export_main.config_from_flags(flags.FLAGS)))
"""


def _parsed(argv) -> ExportConfig:
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE, *argv], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return eval(proc.stdout.strip().splitlines()[-1], {"ExportConfig": ExportConfig})


def test_command_line_round_trips_through_the_flags():
    cfg = ExportConfig(
        output_dir="out dir",
        model_dir="md",
        arch="a.json",
        quantize=("float32", "int8"),
        max_accuracy_drop=100.0,
        use_ema=False,
        verify_images=64,
    )
    argv = shlex.split(export_main.command_line(cfg))
    assert argv[0] == "elasticvit-export"
    assert "--quantize=float32,int8" in argv and "--nouse_ema" in argv
    assert "--seed=0" not in argv  # defaults are left out
    # The flags' defaults are the config's: the short command means the same config.
    assert _parsed(argv[1:]) == cfg


def test_cli_reports_clear_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "elasticvit_tf.export.export_main",
            "--keras_model=/nonexistent.keras",
            "--quantize=float32,int4",
            f"--output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 2  # bad input (docs/design.md#error-conventions)
    assert "elasticvit-export: error: Unknown quantization mode 'int4'" in proc.stderr
    assert not (tmp_path / "out").exists()

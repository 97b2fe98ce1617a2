"""elasticvit-train: bad input (exit code 2, nothing written) and kill-and-resume (SIGKILL)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from elasticvit_tf import cli
from elasticvit_tf import model_dir as md
from elasticvit_tf.space import get_space
from elasticvit_tf.train import train_main

FLAGS = flags.FLAGS
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


@pytest.fixture
def run_main(capsys):
    try:
        train_main.define_flags()
    except flags.DuplicateFlagError:
        pass

    def run(*args):
        FLAGS.unparse_flags()
        FLAGS(["elasticvit-train", *args])
        code = cli.execute("elasticvit-train", train_main.main, ["elasticvit-train"])
        return code, capsys.readouterr().err

    yield run
    FLAGS.unparse_flags()


def _base(model_dir):
    return [f"--model_dir={model_dir}", "--space=tiny", "--dataset=digits", "--steps=2"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset=imagenet_from_nowhere"], "Unknown dataset 'imagenet_from_nowhere'"),
        (["--sampler=greedy"], "unknown sampler 'greedy'"),
        (["--strategy=tpu_pod"], "unknown strategy 'tpu_pod'"),
        (["--dataset=fashion_mnist", "--data_dir=/nonexistent/fm"], "/nonexistent/fm"),
        (["--space=huge"], "unknown space 'huge'"),
        (["--preset=fast"], "unknown --preset 'fast'"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, run_main, extra, message):
    out = tmp_path / "run"
    code, err = run_main(*_base(out), *extra)
    assert code == 2
    assert "elasticvit-train: error:" in err and message in err
    assert not out.exists()


def test_model_dir_of_another_space_is_refused(tmp_path, run_main):
    out = tmp_path / "run"
    demo = get_space("demo")
    md.write_config(str(out), {**md.space_config(demo), "num_classes": 10})
    before = sorted(os.listdir(out)), (out / "config.json").read_text()
    code, err = run_main(*_base(out))
    assert code == 2
    assert f"model_dir {out} holds space 'demo'" in err and "expected 'tiny'" in err
    assert (sorted(os.listdir(out)), (out / "config.json").read_text()) == before


def test_batch_not_divisible_by_replicas_exits_2(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "elasticvit_tf.train.train_main", *_base(out)]
    cmd += ["--strategy=mirrored", "--cpu_devices=2", "--batch_size=33"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "batch_size=33 is not divisible by the 2 replicas" in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------------ kill and resume
def _train_cmd(model_dir):
    return [
        sys.executable,
        "-m",
        "elasticvit_tf.train.train_main",
        f"--model_dir={model_dir}",
        "--space=tiny",
        "--dataset=digits",
        "--sampler=elasticvit",
        "--steps=12",
        "--steps_per_epoch=5",
        "--batch_size=16",
        "--checkpoint_every=3",
        "--deterministic",
        "--log_archs",
        "--eval_batches=1",
        "--calib_batches=1",
        "--search_size=100",
        "--ema_warmup",
        "--verbose=0",
    ]


def _arch_log(model_dir):
    path = os.path.join(model_dir, "arch_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


@pytest.mark.slow
def test_sigkill_and_resume_continue_identically(tmp_path):
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    # The interrupted run is killed once its 8th step has started (checkpoints at 3 and 6).
    proc = subprocess.Popen(
        _train_cmd(run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= 7 for r in _arch_log(run)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_log = _arch_log(run)
    assert md.latest_checkpoint(run).endswith("ckpt-6")

    resumed = subprocess.run(_train_cmd(run), env=ENV, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 6" in resumed.stdout
    assert json.loads(resumed.stdout[resumed.stdout.index("{") :])["step"] == 12

    full = subprocess.run(_train_cmd(ref), env=ENV, capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    ref_log = {r["step"]: r for r in _arch_log(ref)}
    assert sorted(ref_log) == list(range(12))

    # The resume trimmed the log to the restored step (6): one line per step, and every line,
    # the killed run's included, identical to the uninterrupted run (same archs, levels).
    after = _arch_log(run)
    assert len(killed_log) > 6 and [r["step"] for r in after] == list(range(12))
    for r in killed_log + after:
        assert r["archs"] == ref_log[r["step"]]["archs"], r["step"]
        assert r["level"] == ref_log[r["step"]]["level"]

    # Same final weights, EMA, optimizer and sampler state.
    a = tf.train.load_checkpoint(md.latest_checkpoint(ref))
    b = tf.train.load_checkpoint(md.latest_checkpoint(run))
    names = [n for n in a.get_variable_to_shape_map() if "save_counter" not in n]
    assert any(n.startswith("ema/") for n in names) and any("optimizer" in n for n in names)
    for n in names:
        va, vb = a.get_tensor(n), b.get_tensor(n)
        if isinstance(va, bytes):
            assert va == vb, n
        else:
            np.testing.assert_array_equal(va, vb, err_msg=n)

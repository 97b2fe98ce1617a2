"""Stopping and resuming the long-running binaries (issue 12): SIGTERM (the signal a cluster
scheduler sends before pre-emption) and kill -9, a second training refused by the model_dir's
lock, a damaged latest checkpoint. Real processes of ``elasticvit-train``/``-search``. (Training
after kill -9: tests/test_train_main.py::test_sigkill_and_resume_continue_identically.)"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from elasticvit_tf import model_dir as md

pytestmark = pytest.mark.slow
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="")


def _exe(binary):
    return os.path.join(os.path.dirname(sys.executable), binary)


def _wait_for(proc, predicate, timeout=900.0):
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.2)


def _arch_log_steps(model_dir):
    try:
        with open(md.arch_log_path(model_dir)) as f:
            return [json.loads(line)["step"] for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def _train_args(model_dir, steps):
    return [
        _exe("elasticvit-train"),
        f"--model_dir={model_dir}",
        "--space=tiny",
        "--dataset=digits",
        f"--steps={steps}",
        "--batch_size=16",
        "--max_train_examples=512",
        "--checkpoint_every=2",
        "--eval_every=0",
        "--eval_batches=1",
        "--calib_batches=1",
        "--verbose=0",
        "--log_archs",
    ]


def test_train_sigterm_lock_and_damaged_checkpoint(tmp_path):
    from elasticvit_tf.train import train_lib

    model_dir = str(tmp_path / "run")
    args = _train_args(model_dir, 10_000)
    proc = subprocess.Popen(
        args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(proc, lambda: len(_arch_log_steps(model_dir)) >= 5)
        # A second training into the same model_dir is refused (the lock), nothing changes.
        config = train_lib.TrainConfig(
            model_dir=model_dir,
            space="tiny",
            dataset="digits",
            steps=10_000,
            batch_size=16,
            max_train_examples=512,
            checkpoint_every=2,
            eval_every=0,
            eval_batches=1,
            calib_batches=1,
            verbose=0,
            log_archs=True,
        )
        with pytest.raises(ValueError, match=r"being trained by pid \d+"):
            train_lib.train(config)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated by SIGTERM: checkpoint of step" in err.splitlines()[-1]
    stopped = int(err.split("checkpoint of step ")[1].split()[0])
    assert md.latest_checkpoint(model_dir).endswith(f"ckpt-{stopped}")
    assert stopped >= 5

    # Damage the SIGTERM checkpoint: the resume falls back to the previous one and says so.
    latest = md.latest_checkpoint(model_dir)
    with open(latest + ".index", "wb") as f:
        f.write(np.random.default_rng(0).bytes(256))
    previous = md.checkpoint_paths(model_dir)[1]
    prev_step = int(previous.rsplit("-", 1)[1])
    final = stopped + 2
    res = subprocess.run(
        _train_args(model_dir, final), env=ENV, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr
    assert f"falling back to the previous intact checkpoint {previous}" in res.stdout
    assert f"resumed from {previous} at step {prev_step}" in res.stdout
    assert json.loads(res.stdout[res.stdout.index("{") :])["step"] == final
    assert _arch_log_steps(model_dir) == list(range(final))  # one line per step
    assert not glob.glob(os.path.join(md.checkpoint_dir(model_dir), "*_temp"))


# ------------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def search_model_dir(tmp_path_factory):
    from elasticvit_tf import data as data_lib
    from elasticvit_tf.space import get_space
    from elasticvit_tf.supernet import ElasticSupernet

    space = get_space("tiny")
    net = ElasticSupernet(space, 10, num_slots=1)
    md.ensure_built(net, space)
    path = str(tmp_path_factory.mktemp("search_md"))
    config = {
        "num_classes": 10,
        "num_slots": 1,
        "data": data_lib.DataConfig(dataset="digits", search_size=256).to_dict(),
        "split_seed": 0,
    }
    md.save_supernet(path, net, config, step=1)
    return path


def _search_args(model_dir, directory, trials=6):
    return [
        _exe("elasticvit-search"),
        f"--model_dir={model_dir}",
        f"--directory={directory}",
        "--mflops_range=0,100000",
        f"--max_trials={trials}",
        "--population=2",
        "--calibration_batches=3",
        "--eval_batches=2",
        "--batch_size=16",
        "--seed=3",
    ]


def _scores(directory):
    """``{arch key: top1}`` and the number of completed trials of a search directory."""
    with open(os.path.join(directory, "elasticvit_search", "pareto.json")) as f:
        points = json.load(f)["points"]
    return {p["arch_key"]: p["top1"] for p in points}, len(points)


def _completed(directory):
    n = 0
    for path in glob.glob(os.path.join(directory, "elasticvit_search", "trial_*", "trial.json")):
        try:
            with open(path) as f:
                n += json.load(f).get("status") == "COMPLETED"
        except (OSError, json.JSONDecodeError):
            pass
    return n


def test_search_sigterm_and_kill9_resume_scores_like_an_uninterrupted_run(
    tmp_path, search_model_dir
):
    whole = str(tmp_path / "whole")
    res = subprocess.run(
        _search_args(search_model_dir, whole), env=ENV, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    want, n = _scores(whole)
    assert n == 6

    cut = str(tmp_path / "cut")
    for stop in ("sigterm", "kill"):
        proc = subprocess.Popen(
            _search_args(search_model_dir, cut),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        target = 2 if stop == "sigterm" else 4
        try:
            _wait_for(proc, lambda: _completed(cut) >= target)
            if stop == "sigterm":
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=600)
                assert proc.returncode == 143, err
                assert "terminated by SIGTERM: search stopped between trials" in err
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    res = subprocess.run(
        _search_args(search_model_dir, cut), env=ENV, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    got, n = _scores(cut)
    assert n == 6
    common = set(got) & set(want)
    assert len(common) >= 3
    assert {k: got[k] for k in common} == {k: want[k] for k in common}

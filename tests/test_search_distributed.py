"""Chief + 2 workers on 127.0.0.1 (Keras Tuner's KERASTUNER_* gRPC mode), fake evaluator."""

import collections
import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_complete_without_lost_or_duplicated_trials(tmp_path):
    port = _free_port()
    max_trials = 24
    procs = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(port),
        )
        cmd = [
            sys.executable,
            os.path.join(HERE, "search_fakes.py"),
            "--directory",
            str(tmp_path),
            "--log",
            str(tmp_path / "evals.log"),
            "--max_trials",
            str(max_trials),
            "--population",
            "6",
            "--sleep",
            "0.15",
            "--summary",
            str(tmp_path / f"summary_{tuner_id}.json"),
        ]
        procs[tuner_id] = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    try:
        for tuner_id, p in procs.items():
            _, err = p.communicate(timeout=150)
            assert p.returncode == 0, f"{tuner_id}: {err.decode()[-3000:]}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()

    summaries = {t: json.loads((tmp_path / f"summary_{t}.json").read_text()) for t in procs}
    assert summaries["chief"]["role"] == "chief" and summaries["chief"]["trials"] == max_trials
    assert summaries["chief"]["evaluations"] == 0  # the chief only serves the oracle
    worker_evals = [summaries[t]["evaluations"] for t in ("tuner0", "tuner1")]
    assert sum(worker_evals) == max_trials and min(worker_evals) > 0  # both workers worked

    lines = (tmp_path / "evals.log").read_text().splitlines()
    by_worker = collections.Counter(line.split()[0] for line in lines)
    assert set(by_worker) == {"tuner0", "tuner1"}
    keys = collections.Counter(line.split()[1] for line in lines)
    assert len(keys) == max_trials and max(keys.values()) == 1  # no duplicate, none lost

    pareto = json.loads((tmp_path / "p" / "pareto.json").read_text())
    assert len(pareto["points"]) == max_trials
    assert {p["arch_key"] for p in pareto["points"]} == set(keys)
    oracle = json.loads((tmp_path / "p" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and len(oracle["end_order"]) == max_trials
    assert oracle["elasticvit"]["generation"] >= 3  # 6 + 3 + 3 + ... : evolution ran

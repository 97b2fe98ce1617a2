"""Local stand-ins for the README guides' real resources (used by tests/test_readme_guides.py).

* ``python tests/readme_fixtures.py elasticvit-NAME [flags...]`` runs an installed console
  script in this process after entering the stand-ins named by environment variables:
  ``README_MOCK_TFDS=N`` (``tfds.testing.mock_data(num_examples=N)``: ImageNet without
  ImageNet) and ``README_LOGICAL_CPUS=N`` (the CPU split into N logical devices: the local
  equivalent of N GPUs for ``MirroredStrategy``).
* ``install_fake_adb``: an ``adb`` executable for PATH that plays an Android phone running
  ``benchmark_model``; its latency grows with the pushed model's size, so int8 files are
  faster than float32 ones and a LUT built through it is meaningful.
* ``write_official_checkpoint``: a synthetic official supernet checkpoint (``torch.save``).
* ``write_tiny_model_dir``: an untrained ``tiny`` supernet model_dir on digits.
* ``write_teacher``: a small ``.keras`` classifier to stand in for a teacher.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
FAKE_SERIAL_STATE = "device"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_tf_config(ports: list[int], index: int) -> str:
    """``TF_CONFIG`` of worker ``index`` in a cluster of workers on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


# ------------------------------------------------------------------------------ fake adb
def fake_latency_us(size_bytes: int) -> float:
    """The fake phone's mean latency: 150 us + 1 us per 64 bytes of model."""
    return 150.0 + size_bytes / 64.0


def install_fake_adb(root: str) -> dict:
    """Writes ``root/bin/adb`` (+ its device state under ``root/device``).

    Returns:
        dict with ``path`` (prepend to PATH), ``log`` (one line per adb call: its argv).
    """
    bindir = os.path.join(root, "bin")
    device = os.path.join(root, "device")
    os.makedirs(bindir, exist_ok=True)
    os.makedirs(device, exist_ok=True)
    log = os.path.join(root, "adb.log")
    script = os.path.join(bindir, "adb")
    with open(script, "w") as f:
        f.write(
            textwrap.dedent(
                f"""\
                #!{sys.executable}
                import sys
                sys.path.insert(0, {HERE!r})
                import readme_fixtures
                sys.exit(readme_fixtures.fake_adb_main(sys.argv[1:], {device!r}, {log!r}))
                """
            )
        )
    os.chmod(script, os.stat(script).st_mode | stat.S_IEXEC)
    return {"path": bindir, "log": log}


def _scaled_plain_output(graph: str, size: int, threads: str) -> str:
    """tests/data/benchmark_model_plain.txt with every timing scaled to the model's size."""
    with open(os.path.join(DATA, "benchmark_model_plain.txt")) as f:
        text = f.read()
    scale = fake_latency_us(size) / 24180.4  # the fixture's mean inference time

    def scaled(text: str) -> str:  # the values after "=" or ": ", not the names (p5, p95)
        return re.sub(
            r"(?<=[=:] )\d+(?:\.\d+)?|(?<==)\d+(?:\.\d+)?",
            lambda m: f"{float(m.group(0)) * scale:.1f}",
            text,
        )

    out = []
    for line in text.splitlines():
        if line.startswith("count="):
            count, rest = line.split(" ", 1)
            line = count + " " + scaled(rest)
        elif line.startswith("Inference timings in us:"):
            line = "Inference timings in us:" + scaled(line.split(":", 1)[1])
        line = line.replace("/data/local/tmp/elasticvit/model_float32.tflite", graph)
        line = line.replace("Num threads: [1]", f"Num threads: [{threads}]")
        out.append(line)
    return "\n".join(out) + "\n"


def fake_adb_main(args: list[str], device: str, log: str) -> int:
    """The fake ``adb``: ``-s SERIAL get-state|push|shell ...`` against a folder."""
    with open(log, "a") as f:
        f.write(" ".join(args) + "\n")
    if len(args) < 3 or args[0] != "-s":
        sys.stderr.write(f"fake adb: unsupported call {args}\n")
        return 1
    cmd = args[2:]
    if cmd[0] == "get-state":
        print(FAKE_SERIAL_STATE)
        return 0
    if cmd[0] == "push":
        local, remote = cmd[1], cmd[2]
        with open(os.path.join(device, remote.replace("/", "_")), "w") as f:
            f.write(str(os.path.getsize(local)))
        return 0
    if cmd[0] != "shell":
        sys.stderr.write(f"fake adb: unsupported command {cmd}\n")
        return 1
    line = " ".join(cmd[1:])
    if "benchmark_model" not in line or "--graph=" not in line:
        return 0  # mkdir -p, chmod +x
    graph = re.search(r"--graph=(\S+)", line).group(1)
    threads = re.search(r"--num_threads=(\d+)", line).group(1)
    try:
        with open(os.path.join(device, graph.replace("/", "_"))) as f:
            size = int(f.read())
    except FileNotFoundError:
        sys.stderr.write(f"fake adb: {graph}: no such file on the device\n")
        return 1
    if "--enable_op_profiling=true" in line:
        with open(os.path.join(DATA, "benchmark_model_op_profiling.txt")) as f:
            sys.stdout.write(f.read())
    else:
        sys.stdout.write(_scaled_plain_output(graph, size, threads))
    return 0


# ------------------------------------------------------------------------------ artefacts
def write_official_checkpoint(path: str, space: str = "tiny", num_classes=None, seed=0) -> str:
    """A synthetic official checkpoint (``state_dict`` + ``model_ema``) for ``space``."""
    import numpy_reference as nr
    import torch

    from elasticvit_tf.space import get_space

    sp = get_space(space)

    def sd(s):
        return {k: torch.tensor(v) for k, v in nr.random_state_dict(sp, s, num_classes).items()}

    torch.save({"state_dict": sd(seed), "model_ema": sd(seed + 1), "epoch": 600}, path)
    return path


def write_tiny_model_dir(path: str) -> str:
    """An untrained ``tiny`` supernet model_dir on digits (as tests/test_search_main.py)."""
    from elasticvit_tf import data as data_lib
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.space import get_space
    from elasticvit_tf.supernet import ElasticSupernet

    space = get_space("tiny")
    net = ElasticSupernet(space, 10, num_slots=1)
    md.ensure_built(net, space)
    data = data_lib.DataConfig(dataset="digits", image_size=24, search_size=64, augment="light")
    config = {"space": "tiny", "num_classes": 10, "num_slots": 1, "data": data.to_dict()}
    md.save_supernet(path, net, config)
    return path


def write_teacher(path: str, num_classes: int, seed: int = 0) -> str:
    """A small ``.keras`` logits classifier accepting any image size."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(num_classes)(x)).save(path)
    return path


# ------------------------------------------------------------------------------ runner
def _console_script(name: str):
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    if not eps:
        raise SystemExit(f"readme_fixtures: no console script {name!r} is installed")
    return eps[0].load()


def main(argv: list[str]) -> None:
    """``readme_fixtures.py elasticvit-NAME [flags...]``: runs the binary with stand-ins."""
    if not argv or not argv[0].startswith("elasticvit-"):
        raise SystemExit("usage: readme_fixtures.py elasticvit-NAME [flags...]")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    entry = _console_script(argv[0])
    cpus = int(os.environ.get("README_LOGICAL_CPUS", "0") or 0)
    if cpus > 1:
        import tensorflow as tf

        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * cpus,
        )
    sys.argv = list(argv)
    mock = int(os.environ.get("README_MOCK_TFDS", "0") or 0)
    if mock:
        import tensorflow_datasets as tfds

        with tfds.testing.mock_data(num_examples=mock):
            entry()
    else:
        entry()


if __name__ == "__main__":
    main(sys.argv[1:])

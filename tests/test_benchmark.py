"""Tests of export/benchmark.py: benchmark_model parser (recorded outputs), LiteRT local timing,
and the adb flow with a fake `adb` executable on PATH."""

import os
import stat
import sys
import textwrap

import numpy as np
import pytest

from elasticvit_tf.export import benchmark as B

DATA = os.path.join(os.path.dirname(__file__), "data")


def _fixture(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def test_parse_op_profiling_output():
    # Values are the literals written in tests/data/benchmark_model_op_profiling.txt.
    out = B.parse_benchmark_model_output(_fixture("benchmark_model_op_profiling.txt"))
    assert out["init_ms"] == pytest.approx(7.883)
    assert out["first_ms"] == pytest.approx(21.032)
    assert out["warmup_avg_ms"] == pytest.approx(13.1876)
    assert out["mean_ms"] == pytest.approx(12.6119)
    assert out["runs"] == 80 and out["warmup_runs"] == 38
    assert out["min_ms"] == pytest.approx(12.290) and out["max_ms"] == pytest.approx(14.011)
    assert out["std_ms"] == pytest.approx(0.301)
    assert "median_ms" not in out  # this tool version prints no percentiles
    assert out["init_memory_mb"] == pytest.approx(6.14453)
    assert out["overall_memory_mb"] == pytest.approx(11.3828)
    assert out["model_size_mb"] == pytest.approx(1.87431)
    # Only the regular-run tables, not the initialization ones.
    summary = {op.node_type: op for op in out["op_profile"]}
    assert list(summary) == ["TfLiteXNNPackDelegate", "BATCH_MATMUL", "SOFTMAX"]
    assert summary["BATCH_MATMUL"].count == 2
    assert summary["BATCH_MATMUL"].avg_ms == pytest.approx(2.175)
    assert summary["BATCH_MATMUL"].percent == pytest.approx(17.339)
    assert summary["SOFTMAX"].times_called == 1
    assert [op.node_type for op in out["op_runs"]] == [
        "TfLiteXNNPackDelegate",
        "BATCH_MATMUL",
        "SOFTMAX",
        "BATCH_MATMUL",
        "TfLiteXNNPackDelegate",
    ]
    assert out["op_runs"][2].name == "[stage2_layer0_attention/Softmax]:93"
    assert out["op_runs"][1].first_ms == pytest.approx(1.204)
    assert sum(op.percent for op in out["op_profile"]) == pytest.approx(100.0, abs=0.01)


def test_parse_plain_output_with_percentiles():
    out = B.parse_benchmark_model_output(_fixture("benchmark_model_plain.txt"))
    assert out["mean_ms"] == pytest.approx(24.1804)
    assert out["median_ms"] == pytest.approx(24.090)
    assert out["p5_ms"] == pytest.approx(23.811) and out["p95_ms"] == pytest.approx(25.210)
    assert out["init_ms"] == pytest.approx(3.127)
    assert out["overall_memory_mb"] == pytest.approx(17.3594)
    assert out["init_memory_mb"] == 0.0
    assert "op_profile" not in out


def test_parse_litert_output():
    out = B.parse_benchmark_model_output(_fixture("benchmark_model_litert.txt"))
    assert out["init_ms"] == pytest.approx(5.10)
    assert out["first_ms"] == pytest.approx(2.71)
    assert out["mean_ms"] == pytest.approx(1.89)
    assert out["median_ms"] == pytest.approx(1.874)
    assert out["runs"] == 530
    assert out["init_memory_mb"] == pytest.approx(7.52)
    assert out["overall_memory_mb"] == pytest.approx(9.87)
    names = [op.node_type for op in out["op_profile"]]
    assert names[0] == "Convolution (NHWC, F32) IGEMM" and len(names) == 4
    assert out["op_runs"][2].times_called == 2
    assert out["op_runs"][1].percent == pytest.approx(65.236)


def test_parse_rejects_output_without_timings():
    with pytest.raises(ValueError, match="No inference timings"):
        B.parse_benchmark_model_output("ERROR: Could not open 'model.tflite'.\n")


def test_parse_target():
    assert B.parse_target("local") == ("local", None)
    assert B.parse_target("adb:emulator-5554") == ("adb", "emulator-5554")
    for bad in ("adb:", "phone", "ADB:x"):
        with pytest.raises(ValueError, match="expected 'local' or 'adb:SERIAL'"):
            B.parse_target(bad)


@pytest.fixture(scope="module")
def tiny_tflite():
    import keras
    import tensorflow as tf

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def test_benchmark_local_statistics(tiny_tflite, tmp_path):
    res = B.benchmark_local(tiny_tflite, num_threads=1, warmup=2, runs=15)
    assert res.target == "local" and res.runs == 15 and res.warmup_runs == 2
    assert res.runtime.startswith("ai_edge_litert")
    assert 0 < res.min_ms <= res.p5_ms <= res.median_ms <= res.p95_ms <= res.max_ms
    assert res.init_ms > 0 and res.first_ms > 0
    assert res.model_size_bytes == len(tiny_tflite)
    assert res.peak_rss_mb > 0
    assert res.extra["inputs"] == [{"shape": [1, 8, 8, 3], "dtype": "float32"}]
    path = tmp_path / "m.tflite"
    path.write_bytes(tiny_tflite)
    res2 = B.benchmark_local(str(path), runs=3, warmup=0)
    assert res2.model_size_bytes == len(tiny_tflite) and res2.warmup_avg_ms is None
    d = res2.to_dict()
    assert d["runs"] == 3 and isinstance(d["op_profile"], list)
    assert res.mad_ms >= 0 and res2.mad_ms >= 0
    # min_time_s keeps timing past `runs` (at most 20 x runs); clock="cpu" times the thread.
    res3 = B.benchmark_local(tiny_tflite, runs=2, warmup=0, min_time_s=60.0, clock="cpu")
    assert res3.runs == 40 and res3.median_ms > 0


def test_benchmark_local_bad_args(tiny_tflite):
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        B.benchmark_local(tiny_tflite, num_threads=0)
    with pytest.raises(ValueError, match="runs >= 1"):
        B.benchmark_local(tiny_tflite, runs=0)
    with pytest.raises(ValueError, match="clock='gpu'"):
        B.benchmark_local(tiny_tflite, clock="gpu")
    with pytest.raises(ValueError, match="clock='cpu' needs num_threads=1"):
        B.benchmark_local(tiny_tflite, num_threads=2, clock="cpu")
    with pytest.raises(ValueError, match="times wall clock only"):
        B.benchmark(tiny_tflite, target="adb:X", clock="cpu")


# ----------------------------------------------------------------------------------------------
# adb flow with a fake adb
# ----------------------------------------------------------------------------------------------


def _install_fake_adb(tmp_path, monkeypatch, fixture=None, state="device", fail=None):
    """Puts an `adb` script on PATH that logs its argv and replays a fixture for `shell`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "adb.log"
    script = bindir / "adb"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import sys
            args = sys.argv[1:]
            with open({str(log)!r}, "a") as f:
                f.write(" ".join(args) + "\\n")
            fail = {fail!r}
            if fail:
                sys.stderr.write(fail + "\\n")
                sys.exit(1)
            cmd = args[2:]
            if cmd[0] == "get-state":
                print({state!r})
            elif cmd[0] == "shell" and "benchmark_model --graph" in " ".join(cmd):
                sys.stdout.write(open({str(os.path.join(DATA, fixture or "x"))!r}).read())
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_adb_flow_pushes_runs_and_parses(tmp_path, monkeypatch):
    log = _install_fake_adb(tmp_path, monkeypatch, fixture="benchmark_model_op_profiling.txt")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"TFL3 fake model")
    res = B.benchmark(
        str(model),
        target="adb:R58M123",
        num_threads=4,
        warmup=10,
        runs=50,
        benchmark_model_path=str(binary),
        enable_op_profiling=True,
    )
    calls = log.read_text().splitlines()
    assert calls[0] == "-s R58M123 get-state"
    assert f"-s R58M123 push {model} /data/local/tmp/elasticvit/model_int8.tflite" in calls
    assert f"-s R58M123 push {binary} /data/local/tmp/elasticvit/benchmark_model" in calls
    assert "-s R58M123 shell chmod +x /data/local/tmp/elasticvit/benchmark_model" in calls
    run_call = calls[-1]
    assert run_call.startswith("-s R58M123 shell /data/local/tmp/elasticvit/benchmark_model")
    for flag in (
        "--graph=/data/local/tmp/elasticvit/model_int8.tflite",
        "--num_threads=4",
        "--warmup_runs=10",
        "--num_runs=50",
        "--enable_op_profiling=true",
    ):
        assert flag in run_call
    assert res.target == "adb:R58M123" and res.runtime == "benchmark_model"
    assert res.mean_ms == pytest.approx(12.6119) and res.runs == 80
    assert res.model_size_bytes == len(b"TFL3 fake model")
    assert [op.node_type for op in res.op_profile][1] == "BATCH_MATMUL"


def test_adb_bytes_model_without_profiling(tmp_path, monkeypatch):
    log = _install_fake_adb(tmp_path, monkeypatch, fixture="benchmark_model_plain.txt")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"bin")
    res = B.benchmark_adb(b"model-bytes", "emu", str(binary), num_threads=1)
    assert "--enable_op_profiling" not in log.read_text()
    assert res.median_ms == pytest.approx(24.090) and res.op_profile == []


def test_adb_unreachable_device(tmp_path, monkeypatch):
    _install_fake_adb(
        tmp_path,
        monkeypatch,
        fail="adb: device 'GONE123' not found",
        fixture="benchmark_model_plain.txt",
    )
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"bin")
    with pytest.raises(B.AdbError, match="'GONE123' is not reachable over adb"):
        B.benchmark(b"m", target="adb:GONE123", benchmark_model_path=str(binary))


def test_adb_offline_state(tmp_path, monkeypatch):
    _install_fake_adb(tmp_path, monkeypatch, state="offline", fixture="benchmark_model_plain.txt")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"bin")
    with pytest.raises(B.AdbError, match="not ready"):
        B.benchmark(b"m", target="adb:X", benchmark_model_path=str(binary))


def test_adb_missing_binary_and_missing_adb(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="benchmark_model binary"):
        B.benchmark(b"m", target="adb:X", benchmark_model_path=str(tmp_path / "nope"))
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"bin")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(B.AdbError, match="adb was not found on PATH"):
        B.benchmark(b"m", target="adb:X", benchmark_model_path=str(binary))


def test_runtime_versions_has_litert():
    v = B.runtime_versions()
    assert v["ai_edge_litert"] != "unknown" and "python" in v
    assert np.all([isinstance(x, str) for x in v.values()])

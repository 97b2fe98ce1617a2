"""Tests of export/export_lib.py: end to end on a `tiny` model_dir with the digits data, and the
failure modes: nothing half-written in output_dir."""

import json
import os
import stat
import sys

import numpy as np
import pytest

from elasticvit_tf.export import benchmark as bench_lib
from elasticvit_tf.export import export_lib
from elasticvit_tf.export import quantize as quant_lib
from elasticvit_tf.export import tflite as tflite_lib
from elasticvit_tf.export import verify as verify_lib

FAST = dict(
    calibration_batches=2,
    calibration_batch_size=32,
    representative_steps=32,
    verify_images=64,
    warmup_runs=1,
    benchmark_runs=5,
    qat_batch_size=8,
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.space import get_space

    space = get_space("tiny")
    root = tmp_path_factory.mktemp("md")
    net = md.build_supernet(space, {"num_classes": 10})
    config = {
        "num_classes": 10,
        "data": {"dataset": "digits", "image_size": 16, "search_size": 0},
        "split_seed": 0,
    }
    md.save_supernet(str(root / "model_dir"), net, config)
    arch_path = root / "arch.json"
    arch_path.write_text(space.min_arch().to_json())
    return str(root / "model_dir"), str(arch_path)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("hard_silu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    path = tmp_path_factory.mktemp("keras") / "small.keras"
    model.save(path)
    return str(path)


def _assert_nothing_written(out_dir):
    assert not os.path.exists(out_dir), os.listdir(out_dir)
    parent = os.path.dirname(out_dir)
    leftovers = [n for n in os.listdir(parent) if ".staging_" in n]
    assert leftovers == []


def test_unknown_mode(tmp_path, keras_file):
    out = str(tmp_path / "out")
    cfg = export_lib.ExportConfig(
        output_dir=out, keras_model=keras_file, quantize=("float32", "int4")
    )
    with pytest.raises(ValueError, match="Unknown quantization mode 'int4'"):
        export_lib.run_export(cfg, log=lambda *_: None)
    _assert_nothing_written(out)


def test_bad_int8_float_ops(tmp_path, keras_file):
    out = str(tmp_path / "out")
    cfg = export_lib.ExportConfig(
        output_dir=out, keras_model=keras_file, quantize=("int8",), int8_float_ops=("LAYERNORM",)
    )
    with pytest.raises(ValueError, match=r"Unknown TFLite op type\(s\) \['LAYERNORM'\]"):
        export_lib.run_export(cfg, log=lambda *_: None)
    cfg = export_lib.ExportConfig(
        output_dir=out, keras_model=keras_file, quantize=("float32",), int8_float_ops=("SOFTMAX",)
    )
    with pytest.raises(ValueError, match="--int8_float_ops=SOFTMAX applies to --quantize=int8"):
        export_lib.run_export(cfg, log=lambda *_: None)
    _assert_nothing_written(out)


def test_bad_source_and_target_settings(tmp_path, keras_file):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="either --model_dir .* or --keras_model"):
        export_lib.ExportConfig(output_dir=out).validate()
    with pytest.raises(ValueError, match="--model_dir needs --arch"):
        export_lib.ExportConfig(output_dir=out, model_dir="x").validate()
    with pytest.raises(ValueError, match="needs --benchmark_model_path"):
        export_lib.ExportConfig(output_dir=out, keras_model=keras_file, target="adb:X").validate()
    with pytest.raises(ValueError, match="expected 'local' or 'adb:SERIAL'"):
        export_lib.ExportConfig(output_dir=out, keras_model=keras_file, target="phone").validate()
    with pytest.raises(ValueError, match="int8_io must be 'float' or 'int8'"):
        export_lib.ExportConfig(output_dir=out, keras_model=keras_file, int8_io="uint8").validate()


def test_arch_outside_checkpoint_space(tmp_path, tiny_model_dir):
    model_dir, _ = tiny_model_dir
    out = str(tmp_path / "out")
    cfg = export_lib.ExportConfig(output_dir=out, model_dir=model_dir, arch="elastic_S1")
    with pytest.raises(ValueError, match="'elastic_S1' is not in the checkpoint's space 'tiny'"):
        export_lib.run_export(cfg, log=lambda *_: None)
    with pytest.raises(ValueError, match="is neither a published model"):
        export_lib.run_export(
            export_lib.ExportConfig(output_dir=out, model_dir=model_dir, arch="nope")
        )
    _assert_nothing_written(out)


def test_missing_representative_data(tmp_path, keras_file):
    out = str(tmp_path / "out")
    cfg = export_lib.ExportConfig(
        output_dir=out, keras_model=keras_file, quantize=("float32", "int8")
    )
    with pytest.raises(quant_lib.RepresentativeDataError, match=r"\['int8'\] need representative"):
        export_lib.run_export(cfg, log=lambda *_: None)
    _assert_nothing_written(out)


def test_verification_failure_writes_nothing(tmp_path, keras_file, monkeypatch):
    real_convert = tflite_lib.convert

    def wrong_convert(model, mode, **kw):
        # Converts a copy with perturbed weights: the file no longer matches the Keras model.
        import keras

        clone = keras.models.clone_model(model)
        clone.set_weights([w + 0.01 for w in model.get_weights()])
        return real_convert(clone, mode, **kw)

    monkeypatch.setattr(export_lib.tflite_lib, "convert", wrong_convert)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier file")
    cfg = export_lib.ExportConfig(
        output_dir=str(out), keras_model=keras_file, data="digits", **FAST
    )
    with pytest.raises(verify_lib.VerificationError, match="float32: max abs logit error"):
        export_lib.run_export(cfg, log=lambda *_: None)
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert [n for n in os.listdir(tmp_path) if ".staging_" in n] == []


def test_unreachable_adb_device_writes_nothing(tmp_path, keras_file, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write(\"device 'D1' not found\")\n"
        "sys.exit(1)\n"
    )
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"bin")
    out = str(tmp_path / "out")
    cfg = export_lib.ExportConfig(
        output_dir=out,
        keras_model=keras_file,
        target="adb:D1",
        benchmark_model_path=str(binary),
        verify_images=16,
    )
    with pytest.raises(bench_lib.AdbError, match="'D1' is not reachable over adb"):
        export_lib.run_export(cfg, log=lambda *_: None)
    _assert_nothing_written(out)


def test_keras_model_export_with_data(tmp_path, keras_file):
    out = str(tmp_path / "out")
    cfg = export_lib.ExportConfig(
        output_dir=out,
        keras_model=keras_file,
        data="digits",
        quantize=("float32", "dynamic"),
        max_accuracy_drop=100.0,
        **FAST,
    )
    report = export_lib.run_export(cfg, log=lambda *_: None)
    files = sorted(os.listdir(out))
    assert files == sorted(
        [
            "model.keras",
            "model_float32.tflite",
            "model_dynamic.tflite",
            export_lib.REPORT_JSON,
            export_lib.REPORT_MD,
        ]
    )
    on_disk = json.loads(open(os.path.join(out, export_lib.REPORT_JSON)).read())
    assert on_disk["modes"].keys() == report["modes"].keys() == {"float32", "dynamic"}
    f32 = on_disk["modes"]["float32"]
    assert f32["verification"]["max_abs_error"] <= 1e-4 and f32["verification"]["passed"]
    assert f32["verification"]["accuracy"] is not None and on_disk["labels"] is True
    assert f32["size_bytes"] == os.path.getsize(os.path.join(out, "model_float32.tflite"))
    b = f32["benchmark"]
    assert b["runs"] == 5 and b["p5_ms"] <= b["median_ms"] <= b["p95_ms"] and b["init_ms"] > 0
    prov = on_disk["provenance"]
    assert prov["num_threads"] == 1 and prov["versions"]["tensorflow"] and prov["date"]
    md = open(os.path.join(out, export_lib.REPORT_MD)).read()
    assert "| float32 | model_float32.tflite |" in md and "| dynamic |" in md


def test_benchmark_only(tmp_path, keras_file):
    import keras

    data = tflite_lib.convert(keras.saving.load_model(keras_file), "float32")
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    res = export_lib.run_benchmark_only(str(path), runs=4, warmup=1, output_dir=str(tmp_path / "b"))
    assert res.runs == 4
    saved = json.loads((tmp_path / "b" / "benchmark_report.json").read_text())
    assert saved["tflite"] == str(path) and saved["median_ms"] == pytest.approx(res.median_ms)
    with pytest.raises(ValueError, match="--benchmark_only needs --tflite"):
        export_lib.run_benchmark_only(str(tmp_path / "missing.tflite"))
    prof = export_lib.run_benchmark_only(
        str(path), runs=2, warmup=0, enable_op_profiling=True, output_dir=str(tmp_path / "p")
    )
    summary = export_lib.benchmark_summary(str(path), prof)
    assert "isolated_ops" in summary and "XNNPACK partitions: 1" in summary
    saved = json.loads((tmp_path / "p" / "benchmark_report.json").read_text())
    assert saved["extra"]["op_profile"]["partitions"] == 1
    assert sum(r["count"] for r in saved["op_profile"]) == sum(tflite_lib.list_ops(data).values())


@pytest.mark.slow
def test_model_dir_export(tmp_path, tiny_model_dir):
    """--model_dir + --arch: extract, recalibrate BN, convert float32 + int8, verify, report."""
    model_dir, arch = tiny_model_dir
    out = str(tmp_path / "export")
    cfg = export_lib.ExportConfig(
        output_dir=out,
        model_dir=model_dir,
        arch=arch,
        quantize=("float32", "int8"),
        max_accuracy_drop=100.0,  # untrained supernet: accuracy is chance level
        **FAST,
    )
    report = export_lib.run_export(cfg, log=lambda *_: None)
    for mode in ("float32", "int8"):
        assert os.path.isfile(os.path.join(out, f"model_{mode}.tflite"))
        ver = report["modes"][mode]["verification"]
        assert ver["passed"] and ver["num_images"] == 64 and ver["accuracy"] is not None
        assert not any(k.startswith("CUSTOM") for k in report["modes"][mode]["ops"])
    assert report["modes"]["float32"]["verification"]["max_abs_error"] <= 1e-4
    assert report["arch_key"].startswith("r16-")
    assert report["input_shape"] == [16, 16, 3]
    import keras

    saved = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert tuple(saved.inputs[0].shape[1:]) == (16, 16, 3)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    out32 = verify_lib.run_tflite(os.path.join(out, "model_float32.tflite"), x)
    assert np.max(np.abs(out32 - np.asarray(saved(x)))) <= 1e-4


@pytest.mark.slow
def test_qat_export_compares_with_ptq(tmp_path, keras_file):
    out = str(tmp_path / "export")
    cfg = export_lib.ExportConfig(
        output_dir=out,
        keras_model=keras_file,
        data="digits",
        quantize=("int8", "qat"),
        qat_steps=2,
        max_accuracy_drop=100.0,  # untrained model: accuracy is chance level
        **FAST,
    )
    report = export_lib.run_export(cfg, log=lambda *_: None)
    qat = report["modes"]["qat"]
    assert os.path.isfile(os.path.join(out, "model_qat.tflite"))
    assert qat["verification"]["passed"] and "QUANTIZE" in qat["ops"]
    assert qat["qat"]["steps"] == 2 and len(qat["qat"]["losses"]) == 2
    assert qat["qat"]["float_rebuild_max_abs_error"] <= 1e-4
    cmp = qat["vs_int8_ptq"]
    assert cmp["accuracy_ptq"] == report["modes"]["int8"]["verification"]["accuracy"]
    assert cmp["accuracy_qat"] == qat["verification"]["accuracy"]
    assert "QAT vs int8 PTQ" in open(os.path.join(out, export_lib.REPORT_MD)).read()

"""Flag-free export library: extract a subnet, convert to TFLite per quantization mode, verify,
benchmark (``ExportConfig`` + ``run_export``; ``run_benchmark_only`` for an existing file).

Used by the ``elasticvit-export`` binary (``export_main``) and the demo pipeline. Everything is
produced in a staging directory next to ``output_dir`` and moved into place only after every
mode converted, verified and was benchmarked: a failing export leaves nothing new under
``output_dir``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from elasticvit_tf.export import benchmark as bench_lib
from elasticvit_tf.export import quantize as quant_lib
from elasticvit_tf.export import tflite as tflite_lib
from elasticvit_tf.export import verify as verify_lib
from elasticvit_tf.fileio import write_json_atomic

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"
KERAS_FILE = "model.keras"


@dataclasses.dataclass
class ExportConfig:
    """Everything one export needs (the flags, without absl).

    Either `model_dir` + `arch` (a JSON path or a published name), or `keras_model` (a `.keras`
    file; `data` then names the data set: `digits`, `fashion_mnist`, `tfds:NAME`, ...).
    """

    output_dir: str
    model_dir: str | None = None
    arch: str | None = None
    space: str | None = None
    keras_model: str | None = None
    data: str | None = None
    use_ema: bool = True
    quantize: tuple[str, ...] = ("float32",)
    int8_io: str = "float"
    int8_float_ops: tuple[str, ...] | None = None
    batch_size: int = 1
    representative_steps: int = 100
    calibration_batches: int = 32
    calibration_batch_size: int = 64
    verify_images: int = 256
    verify_split: str = "auto"  # auto: test, else val; search: the search split
    max_accuracy_drop: float = 1.0
    qat_steps: int = 100
    qat_batch_size: int = 32
    num_threads: int = 1
    target: str = "local"
    benchmark_model_path: str | None = None
    enable_op_profiling: bool = False
    warmup_runs: int = 10
    benchmark_runs: int = 50
    seed: int = 0
    # int8-aware choice (export/rerank.py): re-rank the search's candidates within a budget
    rerank_from: str | None = None  # a search's pareto.json
    rerank_budget_ms: float | None = None
    rerank_top_k: int = 5

    def validate(self) -> list[tflite_lib.QuantMode]:
        """Checks the settings before any work; returns the parsed modes."""
        modes = tflite_lib.parse_modes(self.quantize)
        if self.int8_io not in ("float", "int8"):
            raise ValueError(f"--int8_io must be 'float' or 'int8'; received {self.int8_io!r}.")
        if self.int8_float_ops is not None:
            tflite_lib.check_float_ops(self.int8_float_ops)
            if tflite_lib.QuantMode.INT8 not in modes:
                raise ValueError(
                    f"--int8_float_ops={','.join(self.int8_float_ops)} applies to "
                    f"--quantize=int8; received --quantize={','.join(m.value for m in modes)}."
                )
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 0:
            raise ValueError(
                f"--batch_size must be >= 1 (fixed) or 0 (dynamic); received {self.batch_size}."
            )
        has_dir = bool(self.model_dir)
        if has_dir == bool(self.keras_model):
            raise ValueError(
                "Give either --model_dir (with --arch) or --keras_model; received "
                f"model_dir={self.model_dir!r}, keras_model={self.keras_model!r}."
            )
        if self.verify_split not in VERIFY_SPLITS:
            raise ValueError(
                f"--verify_split={self.verify_split}; expected one of {list(VERIFY_SPLITS)}."
            )
        if self.rerank_from:
            self._validate_rerank(modes)
        elif has_dir and not self.arch:
            raise ValueError("--model_dir needs --arch (an arch JSON file or a published name).")
        kind, _ = bench_lib.parse_target(self.target)
        if kind == "adb" and not self.benchmark_model_path:
            raise ValueError("--target=adb:SERIAL needs --benchmark_model_path.")
        for name in ("representative_steps", "verify_images", "num_threads", "benchmark_runs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be >= 1; received {getattr(self, name)}.")
        if self.max_accuracy_drop < 0:
            raise ValueError(f"--max_accuracy_drop must be >= 0; got {self.max_accuracy_drop}.")
        if not self.output_dir:
            raise ValueError("--output_dir is required.")
        return modes

    def _validate_rerank(self, modes) -> None:
        if not self.model_dir or self.arch:
            raise ValueError(
                f"--rerank_from={self.rerank_from} needs --model_dir and no --arch (the "
                f"candidates come from the search); received arch={self.arch!r}."
            )
        if tflite_lib.QuantMode.INT8 not in modes:
            raise ValueError(
                f"--rerank_from ranks by int8 accuracy: --quantize must include int8; received "
                f"--quantize={','.join(m.value for m in modes)}."
            )
        if self.rerank_budget_ms is None or not self.rerank_budget_ms > 0:
            raise ValueError(
                f"--rerank_budget_ms={self.rerank_budget_ms}; expected a latency budget > 0 ms."
            )
        if isinstance(self.rerank_top_k, bool) or int(self.rerank_top_k) < 1:
            raise ValueError(f"--rerank_top_k={self.rerank_top_k}; expected >= 1.")
        if not os.path.isfile(self.rerank_from):
            raise ValueError(
                f"--rerank_from={self.rerank_from}: no such file; expected a search's pareto.json."
            )


# ----------------------------------------------------------------------------------------------
# model + data
# ----------------------------------------------------------------------------------------------


def load_arch(value: str, space=None):
    """An ArchConfig from a published model name or an arch JSON file (an official 10-list JSON
    file needs ``space``); the caller validates it against the checkpoint's space."""
    from elasticvit_tf.space import resolve_arch

    return resolve_arch(value, space, validate=False)


def _build_from_model_dir(cfg: ExportConfig, log, supernet=None) -> tuple[Any, dict, Any]:
    from elasticvit_tf.extract import extract_subnet
    from elasticvit_tf.model_dir import load_supernet, read_config, space_from_config

    try:  # the model_dir's space decodes an official 10-list arch before the net is built
        space = space_from_config(read_config(cfg.model_dir), cfg.space)
    except ValueError:
        space = None  # load_supernet reports it below
    arch = load_arch(cfg.arch, space)
    if supernet is None:
        supernet = load_supernet(cfg.model_dir, space_name=cfg.space, use_ema=cfg.use_ema)
    net, config = supernet
    try:
        net.space.validate_arch(arch)
    except ValueError as err:
        raise ValueError(
            f"--arch {cfg.arch!r} is not in the checkpoint's space {net.space.name!r} "
            f"(model_dir {cfg.model_dir!r}): {err}"
        ) from None
    log(f"Extracting {arch.key()} from {cfg.model_dir}")
    model = extract_subnet(net, arch)
    return model, config.get("data"), arch


def _dataset(data_cfg: dict | None, split: str, batch_size: int, seed: int, cache=None):
    from elasticvit_tf.data import DataConfig, make_dataset

    if data_cfg is None:
        return None
    return make_dataset(DataConfig.from_dict(data_cfg), split, batch_size, seed=seed, cache=cache)


def _data_config(cfg: ExportConfig, from_model_dir: dict | None, side: int) -> dict | None:
    if from_model_dir is not None:
        return dict(from_model_dir)
    if cfg.data:
        from elasticvit_tf.data import DataConfig

        return DataConfig(dataset=cfg.data, image_size=side, search_size=0).to_dict()
    return None


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[1] == side and images.shape[2] == side:
        return images.astype(np.float32)
    from elasticvit_tf.layers.resize import resize_images

    return np.asarray(resize_images(images, side, "bicubic"), dtype=np.float32)


VERIFY_SPLITS = ("auto", "test", "val", "search")


def _eval_split(data_cfg: dict, cache=None, want: str = "auto") -> str:
    """The held-out split used for verification: ``want``, or for ``auto`` test, else val."""
    from elasticvit_tf.data import DataConfig, get_info

    sizes = get_info(DataConfig.from_dict(data_cfg), cache=cache).split_sizes
    for name in ("test", "val") if want == "auto" else (want,):
        if sizes.get(name, 0) > 0:
            return name
    raise ValueError(
        f"--verify_split={want}: the data set has no such non-empty split; splits: {sizes}."
    )


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------


def provenance(num_threads: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "num_threads": int(num_threads),
        "versions": bench_lib.runtime_versions(),
    }


def run_export(cfg: ExportConfig, log=print, supernet=None) -> dict[str, Any]:
    """Runs one export; returns the report dict (also written as export_report.json/.md).

    ``supernet``: ``(net, config)`` already loaded from ``cfg.model_dir`` (several exports of
    one model_dir load it once).

    Raises:
        ValueError: bad settings (unknown mode, arch outside the checkpoint's space, missing
            representative data, ...), raised before anything is written.
        VerificationError: a mode failed verification; nothing is moved into `output_dir`.
        FlexOpError: a converted model needs non-builtin ops.
        AdbError: the adb target is unreachable.
    """
    import keras

    import elasticvit_tf.layers.static_layers  # noqa: F401  (registers the custom layers)

    modes = cfg.validate()
    t_start = time.time()
    if cfg.model_dir:
        model, md_data, arch = _build_from_model_dir(cfg, log, supernet)
    else:
        if not os.path.isfile(cfg.keras_model):
            raise ValueError(f"--keras_model {cfg.keras_model!r} does not exist.")
        model = keras.saving.load_model(cfg.keras_model)
        md_data, arch = None, None
    in_shape = tuple(model.inputs[0].shape[1:])
    if len(in_shape) != 3 or None in in_shape or in_shape[0] != in_shape[1]:
        raise ValueError(f"Expected a fixed square (r, r, C) model input; received {in_shape}.")
    in_shape = tuple(int(d) for d in in_shape)
    side = in_shape[0]
    data_cfg = _data_config(cfg, md_data, side)
    needs_rep = [m for m in modes if m.needs_representative_data]
    if needs_rep and data_cfg is None:
        raise quant_lib.RepresentativeDataError(
            f"Modes {[m.value for m in needs_rep]} need representative data from a training "
            "split; the model comes without a data config: pass --data (e.g. --data=digits) "
            "or use --model_dir."
        )

    # Data: BN calibration + representative images from train; verification from val/test.
    rep_images = train_x = train_y = split = None
    if data_cfg is not None:
        from elasticvit_tf.data import DataCache

        cache = DataCache(max_sources=1)  # every split below from one read of the source
        train = _dataset(data_cfg, "train", cfg.calibration_batch_size, cfg.seed, cache)
        if cfg.model_dir and cfg.calibration_batches > 0:
            from elasticvit_tf.extract import recalibrate_bn

            log(f"Recalibrating BatchNorm on {cfg.calibration_batches} training batches")
            recalibrate_bn(model, train, int(cfg.calibration_batches))
        n_train = max(cfg.representative_steps, cfg.qat_batch_size * 4)
        train_x, train_y = quant_lib.collect_images(
            train, n_train, with_labels=True, what="representative data (train split)"
        )
        train_x = _resize(train_x, side)
        rep_images = train_x[: cfg.representative_steps]
        split = _eval_split(data_cfg, cache, cfg.verify_split)
        eval_ds = _dataset(data_cfg, split, 64, cfg.seed, cache)
        eval_x, eval_y = quant_lib.collect_images(
            eval_ds, cfg.verify_images, with_labels=True, what="verification images"
        )
        eval_x = _resize(eval_x, side)
    else:
        rng = np.random.default_rng(cfg.seed)
        eval_x = rng.standard_normal((min(cfg.verify_images, 32), *in_shape)).astype(np.float32)
        eval_y = None
    ref_logits = verify_lib.keras_logits(model, eval_x)

    out_dir = os.path.abspath(cfg.output_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.staging_", dir=parent)
    try:
        model.save(os.path.join(staging, KERAS_FILE))
        results: dict[str, Any] = {}
        failures = []
        for mode in modes:
            log(f"[{mode.value}] converting")
            t0 = time.time()
            qat_log = None
            if mode is tflite_lib.QuantMode.QAT:
                data, qat_log = quant_lib.run_qat(
                    model,
                    train_x,
                    train_y,
                    rep_images,
                    steps=cfg.qat_steps,
                    batch_size=cfg.qat_batch_size,
                    int8_io=cfg.int8_io,
                    seed=cfg.seed,
                    eval_images=eval_x[:32],
                )
                rebuilt = np.asarray(qat_log.pop("float_rebuild_logits"), np.float32)
                # The tf_keras rebuild must be the same network before fake-quant fine-tuning.
                qat_log["float_rebuild_max_abs_error"] = float(
                    np.max(np.abs(rebuilt.reshape(len(rebuilt), -1) - ref_logits[:32]))
                )
            else:
                data = tflite_lib.convert(
                    model,
                    mode,
                    representative_dataset=rep_images if mode.needs_representative_data else None,
                    int8_io=cfg.int8_io,
                    representative_steps=cfg.representative_steps,
                    batch_size=cfg.batch_size or None,
                    float_ops=(cfg.int8_float_ops if mode is tflite_lib.QuantMode.INT8 else None),
                )
            convert_s = time.time() - t0
            ops = tflite_lib.check_builtin_only(data)
            path = os.path.join(staging, mode.file_name)
            with open(path, "wb") as f:
                f.write(data)
            ver = verify_lib.verify(
                data,
                ref_logits,
                eval_x,
                eval_y,
                mode=mode,
                max_accuracy_drop=cfg.max_accuracy_drop,
                num_threads=cfg.num_threads,
                raise_on_failure=False,
                fresh_process=True,  # a LiteRT crash becomes an error: fresh_process.py
            )
            log(
                f"[{mode.value}] max abs err {ver.max_abs_error:.3g}, top-1 agreement "
                f"{ver.top1_agreement:.1f}%" + ("" if ver.passed else f"  FAILED: {ver.reason}")
            )
            entry: dict[str, Any] = {
                "file": mode.file_name,
                "size_bytes": len(data),
                "input_shape": tflite_lib.input_shape_signature(data),
                "convert_seconds": round(convert_s, 2),
                "ops": ops,
                "verification": ver.to_dict(),
            }
            if qat_log is not None:
                entry["qat"] = {k: v for k, v in qat_log.items() if k != "ops"}
            results[mode.value] = entry
            if not ver.passed:
                failures.append(f"{mode.value}: {ver.reason} (criterion: {ver.criterion})")
        if failures:
            raise verify_lib.VerificationError(
                "Export failed verification; nothing was written to "
                f"{cfg.output_dir!r}:\n  " + "\n  ".join(failures)
            )
        for mode in modes:
            log(f"[{mode.value}] benchmarking on {cfg.target}")
            res = bench_lib.benchmark(
                os.path.join(staging, mode.file_name),
                target=cfg.target,
                num_threads=cfg.num_threads,
                warmup=cfg.warmup_runs,
                runs=cfg.benchmark_runs,
                benchmark_model_path=cfg.benchmark_model_path,
                enable_op_profiling=cfg.enable_op_profiling,
                fresh_process=True,
            )
            results[mode.value]["benchmark"] = res.to_dict()
        _compare_qat(results)
        report = {
            "arch": None if arch is None else json.loads(arch.to_json()),
            "arch_key": None if arch is None else arch.key(),
            "source": {"model_dir": cfg.model_dir, "keras_model": cfg.keras_model},
            "input_shape": list(in_shape),
            "num_verify_images": int(len(eval_x)),
            "verify_split": split,
            "labels": eval_y is not None,
            "config": dataclasses.asdict(cfg),
            "provenance": provenance(cfg.num_threads),
            "modes": results,
            "seconds": round(time.time() - t_start, 1),
        }
        with open(os.path.join(staging, REPORT_JSON), "w") as f:
            json.dump(report, f, indent=2, default=str)
        with open(os.path.join(staging, REPORT_MD), "w") as f:
            f.write(report_markdown(report))
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"Wrote {len(modes)} TFLite model(s) and {REPORT_MD} to {out_dir}")
    return report


def _compare_qat(results: dict[str, Any]) -> None:
    if "qat" in results and "int8" in results:
        q, p = results["qat"]["verification"], results["int8"]["verification"]
        results["qat"]["vs_int8_ptq"] = {
            "accuracy_qat": q["accuracy"],
            "accuracy_ptq": p["accuracy"],
            "max_abs_error_qat": q["max_abs_error"],
            "max_abs_error_ptq": p["max_abs_error"],
            "top1_agreement_qat": q["top1_agreement"],
            "top1_agreement_ptq": p["top1_agreement"],
        }


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable export report."""
    prov = report["provenance"]
    lines = [
        "# Export report",
        "",
        f"- arch: `{report.get('arch_key')}`",
        f"- input: {report['input_shape']} (resize to this size is preprocessing)",
        f"- verification: {report['num_verify_images']} images, labels: {report['labels']}",
        f"- date: {prov['date']}, host: {prov['host']} ({prov['processor']}), "
        f"threads: {prov['num_threads']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
        "",
        "| mode | file | size KiB | max abs err | mean abs err | top-1 agree % | top-1 acc % "
        "| drop pts | median ms | p5 ms | p95 ms | init ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, e in report["modes"].items():
        v, b = e["verification"], e.get("benchmark", {})
        lines.append(
            f"| {mode} | {e['file']} | {e['size_bytes'] / 1024:.1f} | {v['max_abs_error']:.3g} "
            f"| {v['mean_abs_error']:.3g} | {v['top1_agreement']:.1f} | {_fmt(v['accuracy'], '.2f')} "
            f"| {_fmt(v['accuracy_drop'], '.2f')} | {_fmt(b.get('median_ms'))} "
            f"| {_fmt(b.get('p5_ms'))} | {_fmt(b.get('p95_ms'))} | {_fmt(b.get('init_ms'), '.1f')} |"
        )
    if "qat" in report["modes"] and "vs_int8_ptq" in report["modes"]["qat"]:
        c = report["modes"]["qat"]["vs_int8_ptq"]
        lines += [
            "",
            f"QAT vs int8 PTQ: top-1 {_fmt(c['accuracy_qat'], '.2f')} vs "
            f"{_fmt(c['accuracy_ptq'], '.2f')} %, max abs err {c['max_abs_error_qat']:.3g} vs "
            f"{c['max_abs_error_ptq']:.3g}.",
        ]
    for mode, e in report["modes"].items():
        table = e.get("benchmark", {}).get("extra", {}).get("op_profile_table")
        if table:
            lines += ["", f"## Op profile: {mode}", "", table]
    lines.append("")
    return "\n".join(lines)


def run_benchmark_only(
    tflite_path: str,
    target: str = "local",
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    benchmark_model_path: str | None = None,
    enable_op_profiling: bool = False,
    output_dir: str | None = None,
) -> bench_lib.BenchmarkResult:
    """`--benchmark_only`: benchmarks an existing `.tflite`; writes benchmark_report.json."""
    if not tflite_path or not os.path.isfile(tflite_path):
        raise ValueError(
            f"--benchmark_only needs --tflite=PATH of a file; received {tflite_path!r}."
        )
    tflite_lib.check_builtin_only(tflite_path)
    res = bench_lib.benchmark(
        tflite_path,
        target=target,
        num_threads=num_threads,
        warmup=warmup,
        runs=runs,
        benchmark_model_path=benchmark_model_path,
        enable_op_profiling=enable_op_profiling,
    )
    if output_dir:
        write_json_atomic(
            os.path.join(output_dir, "benchmark_report.json"),
            {"tflite": tflite_path, **res.to_dict()},
            default=str,
        )
    return res


def benchmark_summary(tflite_path: str, res: bench_lib.BenchmarkResult) -> str:
    """Human-readable lines of a ``run_benchmark_only`` result (the op profile, if any)."""
    lines = [
        f"{tflite_path} on {res.target}, {res.num_threads} thread(s): median "
        f"{_fmt(res.median_ms)} ms (mean {res.mean_ms:.3f}, p5 {_fmt(res.p5_ms)}, p95 "
        f"{_fmt(res.p95_ms)}), init {_fmt(res.init_ms, '.1f')} ms"
    ]
    if "op_profile_table" in res.extra:
        lines.append(res.extra["op_profile_table"])
    else:
        lines += [
            f"  {op.node_type:40s} {op.avg_ms:9.3f} ms {op.percent:6.2f}%" for op in res.op_profile
        ]
    return "\n".join(lines)

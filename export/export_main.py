"""elasticvit-export: extract a subnet, convert to TFLite per quantization mode, verify, benchmark.

    elasticvit-export --model_dir=runs/demo --arch=best_arch.json \
        --quantize=float32,float16,dynamic,int8 --output_dir=export/
    elasticvit-export --keras_model=model.keras --data=digits --quantize=float32,int8 ...
    elasticvit-export --benchmark_only --tflite=model_int8.tflite --target=adb:SERIAL \
        --benchmark_model_path=/path/to/android/benchmark_model --enable_op_profiling
    elasticvit-export --model_dir=runs/demo --rerank_from=search/pareto.json \
        --rerank_budget_ms=3 --rerank_top_k=5 --quantize=int8 --output_dir=export/

The absl binary over ``export_lib`` (``ExportConfig`` + ``run_export``): a failing export leaves
nothing new under ``--output_dir``.
"""

from __future__ import annotations

import dataclasses
import sys

from elasticvit_tf.export import benchmark as bench_lib
from elasticvit_tf.export import quantize as quant_lib
from elasticvit_tf.export import tflite as tflite_lib
from elasticvit_tf.export import verify as verify_lib
from elasticvit_tf.export.export_lib import (
    ExportConfig,
    benchmark_summary,
    run_benchmark_only,
    run_export,
)


def define_flags() -> None:
    from absl import flags

    f = flags
    f.DEFINE_string("model_dir", None, "model_dir written by elasticvit-train/-convert.")
    f.DEFINE_string("arch", None, "Arch JSON file or published model name (elastic_S1, ...).")
    f.DEFINE_string("space", None, "Expected space preset of --model_dir (checked).")
    f.DEFINE_string("keras_model", None, "A .keras model with a fixed (r, r, 3) input instead.")
    f.DEFINE_string("data", None, "Data set for --keras_model (digits, fashion_mnist, tfds:...).")
    f.DEFINE_boolean("use_ema", True, "Use the checkpoint's EMA weights.")
    f.DEFINE_list(
        "quantize",
        ["float32"],
        "Comma list of float32,float16,dynamic,int8 (mixed recipe),int8_full,qat.",
    )
    f.DEFINE_enum("int8_io", "float", ["float", "int8"], "Input/output type of full-int8 models.")
    f.DEFINE_list(
        "int8_float_ops",
        None,
        "Op types the int8 recipe keeps float (default: HARD_SWISH,BATCH_MATMUL,SOFTMAX,"
        "SQUARED_DIFFERENCE,RSQRT,SUB,MEAN).",
    )
    f.DEFINE_integer("batch_size", 1, "Fixed batch of the TFLite files (0: dynamic batch).")
    f.DEFINE_integer("representative_steps", 100, "Representative images for int8 calibration.")
    f.DEFINE_integer("calibration_batches", 32, "Training batches for BN recalibration (0: off).")
    f.DEFINE_integer("verify_images", 256, "Held-out images used for verification.")
    f.DEFINE_enum(
        "verify_split",
        "auto",
        ["auto", "test", "val", "search"],
        "Held-out split for verification (auto: test, else val).",
    )
    f.DEFINE_float("max_accuracy_drop", 1.0, "Max top-1 drop (points) of quantized modes.")
    f.DEFINE_integer("qat_steps", 100, "QAT fine-tuning steps.")
    f.DEFINE_string("output_dir", None, "Where the .tflite files and reports go.")
    f.DEFINE_integer("num_threads", 1, "Benchmark / verification threads.")
    f.DEFINE_string("target", "local", "local or adb:SERIAL.")
    f.DEFINE_string("benchmark_model_path", None, "Android benchmark_model binary (adb target).")
    f.DEFINE_boolean(
        "enable_op_profiling",
        False,
        "Per-op profile: measured one-op models (local) or benchmark_model (adb).",
    )
    f.DEFINE_integer("warmup_runs", 10, "Benchmark warm-up runs.")
    f.DEFINE_integer("benchmark_runs", 50, "Benchmark timed runs.")
    f.DEFINE_boolean("benchmark_only", False, "Only benchmark --tflite.")
    f.DEFINE_string("tflite", None, "TFLite file for --benchmark_only.")
    f.DEFINE_integer("seed", 0, "Seed for data order and QAT.")
    f.DEFINE_string(
        "rerank_from",
        None,
        "A search's pareto.json: export its best candidates within --rerank_budget_ms in int8 "
        "and keep the best int8 one (measured latency); writes rerank.json/.md.",
    )
    f.DEFINE_float("rerank_budget_ms", None, "Latency budget of the int8-aware choice (ms).")
    f.DEFINE_integer("rerank_top_k", 5, "Candidates the int8-aware choice exports.")


def config_from_flags(FLAGS) -> ExportConfig:
    from elasticvit_tf import cli

    values = cli.values_from_flags(ExportConfig, FLAGS)
    values["quantize"] = tuple(FLAGS.quantize)
    if FLAGS.int8_float_ops is not None:
        values["int8_float_ops"] = tuple(FLAGS.int8_float_ops)
    return ExportConfig(**values)


def command_line(config: ExportConfig) -> str:
    """The ``elasticvit-export`` command that runs ``config`` (flags left at their defaults
    omitted; ``calibration_batch_size`` and ``qat_batch_size`` have no flag)."""
    from elasticvit_tf import cli

    values = dataclasses.asdict(config)
    defaults = dataclasses.asdict(ExportConfig(output_dir=""))
    no_flag = ("calibration_batch_size", "qat_batch_size")
    flags = {k: v for k, v in values.items() if k not in no_flag}
    return cli.command("elasticvit-export", flags, defaults, always=("output_dir",))


def main(argv) -> int:
    from absl import flags

    from elasticvit_tf import cli

    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value")
    FLAGS = flags.FLAGS
    if FLAGS.output_dir:
        cli.check_output_dir(FLAGS.output_dir)
    try:
        if FLAGS.benchmark_only:
            res = run_benchmark_only(
                FLAGS.tflite,
                target=FLAGS.target,
                num_threads=FLAGS.num_threads,
                warmup=FLAGS.warmup_runs,
                runs=FLAGS.benchmark_runs,
                benchmark_model_path=FLAGS.benchmark_model_path,
                enable_op_profiling=FLAGS.enable_op_profiling,
                output_dir=FLAGS.output_dir,
            )
            print(benchmark_summary(FLAGS.tflite, res))
            return 0
        config = config_from_flags(FLAGS)
        if config.rerank_from:
            from elasticvit_tf.export.rerank import run_rerank

            run_rerank(config)
        else:
            run_export(config)
    except (ValueError, bench_lib.AdbError) as err:  # bad input or a missing tool: exit 2
        raise cli.UsageError(str(err)) from None
    except (verify_lib.VerificationError, tflite_lib.FlexOpError, quant_lib.QATError) as err:
        print(f"elasticvit-export: error: {err}", file=sys.stderr)
        return 1  # the model failed a check: not bad input, not a bug
    return 0


def run() -> None:
    """Console-script entry point (`elasticvit-export`)."""
    from elasticvit_tf import cli

    cli.run("elasticvit-export", main, define_flags)


if __name__ == "__main__":
    run()

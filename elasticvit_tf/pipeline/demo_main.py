"""elasticvit-demo: the main job end to end on the embedded default data set.

    elasticvit-demo                       # full run into runs/demo (~15 min on 2 idle cores)
    elasticvit-demo --quick               # the ~2-4 minute CI version, same code path
    elasticvit-demo --dataset=digits --train_steps=200 --max_trials=20 --budgets_ms=0.5,1,1.5

Trains the ``demo`` supernet (Fashion-MNIST; digits with a notice when it is not installed),
builds this CPU's latency LUT (fp32 + int8, 1 thread), searches under three latency budgets,
exports the best subnets as float32 and int8 TFLite (verified, benchmarked) and writes
``<output_dir>/report.md`` (+ ``report.json``, ``pareto.png``, ``training_curve.png``).
Re-running reuses finished stages whose inputs are unchanged (``--noresume`` starts afresh).
Bad flags print one error line and exit with code 2.
"""

from __future__ import annotations

import os

from absl import flags


def define_flags() -> None:
    flags.DEFINE_string("output_dir", "runs/demo", "Where everything goes.")
    flags.DEFINE_bool("quick", False, "The ~2-4 minute CI version (same code path).")
    flags.DEFINE_string(
        "dataset", "fashion_mnist", "fashion_mnist (falls back to digits), digits, tfds:NAME..."
    )
    flags.DEFINE_string("data_dir", None, "Folder holding the Fashion-MNIST IDX files.")
    flags.DEFINE_integer("seed", 0, "Seed of training, LUT design and search.")
    flags.DEFINE_float(
        "train_minutes",
        None,
        "Training time box (default 9): a probe measures the step rate and the recipe's steps "
        "are cut to fit. Not applied when --train_steps is given.",
    )
    flags.DEFINE_integer(
        "train_steps", None, "Fixed training steps, no time box (default: 3 epochs; quick 40)."
    )
    flags.DEFINE_integer("max_train_examples", None, "Cap on the train split (quick: 2048).")
    flags.DEFINE_integer("max_trials", None, "Search trials (default 40; quick 6).")
    flags.DEFINE_list("budgets_ms", [], "Override the three fp32 latency budgets (ms).")
    flags.DEFINE_float("lut_budget_s", None, "LUT measurement budget, both modes (default 90).")
    flags.DEFINE_bool("resume", True, "Reuse finished stages whose inputs are unchanged.")
    flags.DEFINE_integer("num_threads", 1, "Interpreter threads for LUT and benchmarks.")
    flags.DEFINE_enum(
        "lut_clock", "wall", ["wall", "cpu"], "LUT timing: latency, or 1-thread CPU time."
    )
    flags.DEFINE_integer("verbose", 1, "Keras progress bars (1) or not (0).")


def config_from_flags(FLAGS):
    from elasticvit_tf import cli
    from elasticvit_tf.pipeline.demo_config import DemoConfig
    from elasticvit_tf.search.budgets import LatencyBudgets

    budgets = LatencyBudgets.parse(FLAGS.budgets_ms, "--budgets_ms")
    return DemoConfig(**{**cli.values_from_flags(DemoConfig, FLAGS), "budgets_ms": budgets})


def main(argv) -> int:
    from elasticvit_tf import cli

    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value")
    from elasticvit_tf.pipeline import demo_lib

    config = config_from_flags(flags.FLAGS)
    cli.check_output_dir(config.output_dir)
    report = demo_lib.run_demo(config)
    g = report["goals"]
    print(
        f"done in {report['total_seconds']:.0f}s: largest subnet float top-1 "
        f"{g['largest_subnet_top1']}, min {g['min_float_top1']}, max int8 drop "
        f"{g['max_int8_drop']} -> {os.path.join(config.output_dir, 'report.md')}",
        flush=True,
    )
    return 0


def run() -> None:
    """Console-script entry point."""
    from elasticvit_tf import cli

    cli.run("elasticvit-demo", main, define_flags)


if __name__ == "__main__":
    run()

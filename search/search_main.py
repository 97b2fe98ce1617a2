"""elasticvit-search: latency-constrained subnet search of a trained supernet (Keras Tuner).

Examples:
  elasticvit-search --model_dir=runs/demo --latency_lut=lut_fp32.json --latency_mode=fp32 \\
      --latency_budget_ms=2,3,4 --max_trials=300 --population=64 --directory=search_runs
  elasticvit-search --flagfile=search.flags

Re-running with the same --directory/--project_name resumes the search. Distributed: start
one process with KERASTUNER_TUNER_ID=chief and the workers with KERASTUNER_TUNER_ID=tuner0,
tuner1, ..., all with KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT set to the chief's address.
Several devices in one search (search/devices.py): --latency_lut=a.json,b.json
--latency_budget_ms='3,5;8,12' (one budget list per LUT, ';' between lists) [--device_names=
pixel7,a54]; reports hold a front per device and best_arch_<device>_<budget>.json.
Bad input (unreadable model_dir, LUT of another space or mode, LUTs of different modes, a
budget list count that does not match the LUT count, a LUT that cannot price a block type the
space needs, budget below the smallest subnet's latency) prints one error line and exits with
code 2 before any trial runs.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import flags


def define_flags() -> None:
    flags.DEFINE_string("model_dir", None, "Trained supernet directory (elasticvit-train output).")
    flags.DEFINE_string("space", None, "Expected space preset (default: the model_dir's).")
    flags.DEFINE_string(
        "latency_lut",
        None,
        "Latency LUT JSON (elasticvit-lut output), or a comma list, one LUT per device: "
        "every trial is predicted on every device.",
    )
    flags.DEFINE_list(
        "device_names",
        [],
        "With several LUTs: one name per LUT for reports and best_arch_<device>_<budget>.json "
        "(default: the LUT's target and threads, e.g. local-t1).",
    )
    flags.DEFINE_string("latency_mode", None, "Quantization mode the LUT must hold (e.g. fp32).")
    flags.DEFINE_list(
        "latency_budget_ms",
        [],
        "One budget or a comma list (ms); the constraint is the largest, a best arch is "
        "reported per budget. With several LUTs: one list per LUT, ';' between lists "
        "(e.g. '3,5;8,12': 3 and 5 ms on the first device, 8 and 12 ms on the second).",
    )
    flags.DEFINE_list("mflops_range", None, "FLOPs window lo,hi in MFLOPs.")
    flags.DEFINE_integer("max_trials", 256, "Trials in total (a resumed search counts old ones).")
    flags.DEFINE_integer("population", 64, "Evolution population (spec: 512).")
    flags.DEFINE_integer("parents", None, "Top-k parents (default population/2; spec: 256).")
    flags.DEFINE_float("mutation_prob", 0.2, "Per-dimension mutation probability.")
    flags.DEFINE_float("depth_mutation_prob", 0.4, "Probability of redrawing all stage depths.")
    flags.DEFINE_integer("seed", 2012, "Oracle seed.")
    flags.DEFINE_string("directory", "search_runs", "Keras Tuner directory.")
    flags.DEFINE_string("project_name", "elasticvit_search", "Keras Tuner project name.")
    flags.DEFINE_string("output_dir", None, "Where reports go (default: the project directory).")
    flags.DEFINE_integer("calibration_batches", 65, "BN recalibration batches per subnet.")
    flags.DEFINE_integer("eval_batches", 0, "Search-split batches per subnet (0 = all).")
    flags.DEFINE_integer("batch_size", 96, "Batch size for calibration and evaluation.")
    flags.DEFINE_enum("oracle", "evolution", ["evolution", "random"], "Search algorithm.")
    flags.DEFINE_bool("use_memory_banks", True, "Seed the population from the memory banks.")
    flags.DEFINE_bool("overwrite", False, "Discard an existing project of the same name.")


def config_from_flags(FLAGS):
    from elasticvit_tf import cli
    from elasticvit_tf.search.budgets import LatencyBudgets
    from elasticvit_tf.search.devices import parse_budget_lists
    from elasticvit_tf.search.search_lib import SearchConfig

    def floats(name, values):
        try:
            return tuple(float(v) for v in values)
        except ValueError:
            raise ValueError(f"--{name}={','.join(values)}: expected numbers") from None

    budget_text = ",".join(FLAGS.latency_budget_ms)
    luts = [p for p in (FLAGS.latency_lut or "").split(",") if p.strip()]
    single, per_device = LatencyBudgets(), ()
    if len(luts) > 1:
        per_device = parse_budget_lists(budget_text, len(luts))
    elif ";" in budget_text:
        raise ValueError(
            f"--latency_budget_ms={budget_text}: ';' separates the budget lists of several "
            f"LUTs, but --latency_lut names {len(luts)}; expected one comma list"
        )
    else:
        single = LatencyBudgets.parse(FLAGS.latency_budget_ms, "--latency_budget_ms")
    if FLAGS.device_names and len(luts) < 2:
        raise ValueError(
            f"--device_names={','.join(FLAGS.device_names)}: expected several --latency_lut "
            "entries (one name per LUT)"
        )
    mflops = None
    if FLAGS.mflops_range:
        mflops = floats("mflops_range", FLAGS.mflops_range)
        if len(mflops) != 2:
            raise ValueError(f"--mflops_range={FLAGS.mflops_range}: expected lo,hi")
    return SearchConfig(
        **{
            **cli.values_from_flags(SearchConfig, FLAGS),
            "latency_budgets_ms": single,
            "device_budgets_ms": per_device,
            "device_names": tuple(FLAGS.device_names),
            "mflops_range": mflops,
            "eval_batches": FLAGS.eval_batches or None,
        }
    )


def command_line(config) -> str:
    """The ``elasticvit-search`` command that runs ``config`` (a ``SearchConfig``; flags left
    at their defaults omitted)."""
    from elasticvit_tf import cli
    from elasticvit_tf.search.search_lib import SearchConfig

    def flag_values(c):
        renamed = {"latency_budgets_ms": "latency_budget_ms"}
        d = c.to_dict()
        per_device = d.pop("device_budgets_ms")
        if per_device:
            d["latency_budgets_ms"] = ";".join(",".join(f"{b:g}" for b in g) for g in per_device)
        return {renamed.get(k, k): v for k, v in d.items()}

    return cli.command(
        "elasticvit-search", flag_values(config), flag_values(SearchConfig()), always=("model_dir",)
    )


def main(argv) -> int:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from elasticvit_tf import cli
    from elasticvit_tf.search import search_lib

    config = config_from_flags(flags.FLAGS)
    if config.model_dir is None:
        raise cli.UsageError("--model_dir is required (the trained supernet to search)")
    cli.check_output_dir(config.directory, "directory")
    if config.output_dir:
        cli.check_output_dir(config.output_dir, "output_dir")
    result = search_lib.run_search(config)
    if result.get("trials") == 0 and result.get("stop_reason"):
        print(f"elasticvit-search: error: {result['stop_reason']}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.items() if k not in ("best",)}
    summary["best"] = {
        str(b): (None if r is None else {k: r[k] for k in ("trial_id", "top1", "latency_ms")})
        for b, r in result.get("best", {}).items()
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


def run() -> None:
    """Console-script entry point (``elasticvit-search``)."""
    from elasticvit_tf import cli

    cli.run("elasticvit-search", main, define_flags)


if __name__ == "__main__":
    run()

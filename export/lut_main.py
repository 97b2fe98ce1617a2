"""elasticvit-lut: measure a latency lookup table (LUT) for a space on a target.

  elasticvit-lut --space=demo --modes=fp32,int8 --target=local --num_threads=1 \\
      --budget_s=120 --output_dir=luts

A cheap LUT for a phone measures a share of the blocks and predicts the rest from per-type
models fitted on the measured ones (``--measure_fraction=0.25``; the LUT records ``design``
and each model's ``cv_mape`` on measured blocks left out of its fit).

Writes one JSON per mode, named ``lut_<space>_<target>_<mode>_t<threads>_<date>.json``, for
``elasticvit-search --latency_lut``. Bad flags print one error line and exit with code 2.
"""

from __future__ import annotations

import shutil

from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("space", "demo", "Search-space preset (elasticvit, demo, tiny).")
    flags.DEFINE_list("modes", ["fp32", "int8"], "Quantization modes: fp32, int8.")
    flags.DEFINE_string("target", "local", "local (LiteRT here) or adb:SERIAL.")
    flags.DEFINE_string("benchmark_model_path", None, "benchmark_model binary (adb targets).")
    flags.DEFINE_integer("num_threads", 1, "Interpreter threads.", lower_bound=1)
    flags.DEFINE_float("budget_s", 120.0, "Measurement time budget for all modes (seconds).")
    flags.DEFINE_integer("warmup", 10, "Warm-up invocations per measured model.", lower_bound=0)
    flags.DEFINE_integer("runs", 50, "Timed invocations per measured model.", lower_bound=1)
    flags.DEFINE_integer(
        "num_calibration",
        12,
        "Whole subnets measured per mode for the per-block-type scales (>= 8) and the constant.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "calibration_design",
        "mixed",
        ["mixed", "uniform", "spread"],
        "How the calibration subnets are drawn: mixed (half uniform draws, half spread over "
        "the upper FLOPs range), uniform, or spread over the whole FLOPs range.",
    )
    flags.DEFINE_enum(
        "clock",
        "wall",
        ["wall", "cpu"],
        "wall: latency. cpu: the inference thread's CPU time (1 thread, local), which stays "
        "right on a shared, overloaded CPU.",
    )
    flags.DEFINE_float(
        "measure_fraction",
        1.0,
        "Measure at most this share of the space's blocks (every block type at least once); "
        "the rest is predicted by per-type models fitted on the measured blocks (e.g. 0.25 "
        "for a cheap LUT on a phone).",
    )
    flags.DEFINE_integer("seed", 0, "Design / calibration seed.")
    flags.DEFINE_string("output_dir", "luts", "Directory the LUT JSON files go to.")


def command_line(space: str, output_dir: str, **settings) -> str:
    """The ``elasticvit-lut`` command of ``lut_builder.build_lut(get_space(space),
    output_path=output_dir, **settings)`` (every setting given is spelled out)."""
    from elasticvit_tf import cli

    return cli.command("elasticvit-lut", {"space": space, **settings, "output_dir": output_dir})


def main(argv) -> int:
    from elasticvit_tf import cli

    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value")
    from elasticvit_tf.export import benchmark, lut_builder
    from elasticvit_tf.space import get_space

    space = get_space(FLAGS.space)
    cli.check_output_dir(FLAGS.output_dir)
    if FLAGS.target.startswith("adb:") and shutil.which("adb") is None:
        raise cli.UsageError(
            f"--target={FLAGS.target}: adb was not found on PATH; install Android "
            "platform-tools or use --target=local"
        )
    try:
        values = cli.values_from_flags(lut_builder.build_lut, FLAGS)
        values.pop("space", None)  # the --space name, resolved above
        out = lut_builder.build_lut(space, output_path=FLAGS.output_dir, **values)
    except benchmark.AdbError as e:  # adb missing or the device unreachable: exit 2
        raise cli.UsageError(str(e)) from None
    for mode, r in out.items():
        lut = r["lut"]
        cv = {k: round(m["cv_mape"], 3) for k, m in lut["models"].items() if "cv_mape" in m}
        print(
            f"{mode}: {len(lut['entries'])} of {lut['design']['blocks_in_space']} blocks "
            f"measured, constant {lut['constant_ms']:.4f} ms, "
            f"{lut['provenance']['build_seconds']:.1f} s, held-out block MAPE {cv} -> {r['path']}"
        )
    return 0


def run() -> None:
    """Console-script entry point."""
    from elasticvit_tf import cli

    cli.run("elasticvit-lut", main, define_flags)


if __name__ == "__main__":
    run()

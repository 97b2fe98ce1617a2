"""``elasticvit-convert``: official ElasticViT PyTorch checkpoint -> model_dir.

The binary: flags in, ``convert_lib.convert_checkpoint`` out (the mapping and its checks live in
``convert_lib``).
"""

from __future__ import annotations

import sys

from elasticvit_tf.convert_lib import convert_checkpoint


def define_flags():
    from absl import flags

    if "checkpoint" in flags.FLAGS:
        return flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "Official ElasticViT checkpoint (torch.save file).")
    flags.DEFINE_string("model_dir", None, "Output model_dir (must not exist or be empty).")
    flags.DEFINE_bool(
        "use_ema", True, "Convert the 'model_ema' weights when present (else 'state_dict')."
    )
    flags.DEFINE_string("space", "elasticvit", "Search-space preset the checkpoint belongs to.")
    flags.DEFINE_integer(
        "num_classes", None, "Classifier outputs; default: inferred from classifer.weight."
    )
    flags.DEFINE_bool(
        "allow_pickle",
        False,
        "Load with torch.load(weights_only=False): only for trusted checkpoints that hold "
        "pickled objects besides tensors.",
    )
    return flags.FLAGS


def main(argv) -> int:
    FLAGS = define_flags()
    if len(argv) > 1:
        return _fail(f"unexpected positional arguments {argv[1:]}; use --flag=value")
    for name in ("checkpoint", "model_dir"):
        if not getattr(FLAGS, name):
            return _fail(f"--{name} is required")
    from elasticvit_tf import cli

    try:
        cli.check_output_dir(FLAGS.model_dir, "model_dir")
        report = convert_checkpoint(
            FLAGS.checkpoint,
            FLAGS.model_dir,
            space=FLAGS.space,
            num_classes=FLAGS.num_classes,
            use_ema=FLAGS.use_ema,
            allow_pickle=FLAGS.allow_pickle,
        )
    except ValueError as e:  # ConversionError and bad --space / arch values
        return _fail(str(e))
    print(
        f"converted {report.num_tensors} tensors ({report.source}) into {FLAGS.model_dir}: "
        f"{report.num_used} used, {len(report.unused)} unused (listed in conversion.json); "
        f"space {report.space}, {report.num_classes} classes"
    )
    return 0


def _fail(message: str) -> int:
    print(f"elasticvit-convert: error: {message}", file=sys.stderr)
    return 2


def run():
    """Console-script entry point (``elasticvit-convert``)."""
    from elasticvit_tf import cli

    cli.run("elasticvit-convert", main, define_flags)


if __name__ == "__main__":
    run()

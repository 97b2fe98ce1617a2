"""``elasticvit-train``: supernet training binary (absl; ``--flagfile`` works).

Example::

    elasticvit-train --model_dir=runs/demo --space=demo --dataset=fashion_mnist --epochs=3 \\
        --batch_size=128 --sampler=elasticvit

``--preset=demo`` starts from ``TrainConfig.demo()`` (explicit flags still override it). Bad
input (unknown dataset/sampler/strategy, missing data files, a batch size not divisible by the
replicas, a model_dir of another space or run) prints one clear line and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import json

from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    from elasticvit_tf.train.train_lib import STRATEGIES, TrainConfig

    d = TrainConfig()
    flags.DEFINE_string("model_dir", None, "Output directory (config.json, checkpoints/, ...).")
    flags.DEFINE_string("preset", "none", "Start from a named recipe: none or demo.")
    flags.DEFINE_string("space", d.space, "Search-space preset: elasticvit, demo or tiny.")
    flags.DEFINE_string(
        "dataset", d.dataset, "fashion_mnist, digits, tfds:NAME or folder:PATH (class folders)."
    )
    flags.DEFINE_string("data_dir", None, "fashion_mnist: folder holding the IDX files.")
    flags.DEFINE_string("tfds_data_dir", None, "tfds:NAME: TFDS data_dir (prepared data).")
    flags.DEFINE_string("manual_dir", None, "tfds:NAME: manual_dir (e.g. ImageNet-2012 tars).")
    flags.DEFINE_integer("image_size", None, "Pipeline image side (default: largest resolution).")
    flags.DEFINE_string("augment", d.augment, "auto, none, light or imagenet.")
    flags.DEFINE_integer("split_seed", d.split_seed, "Seed of the val/search carve.")
    flags.DEFINE_integer("search_size", d.search_size, "Train images held out for the search.")
    flags.DEFINE_float("val_fraction", d.val_fraction, "Fraction of train carved as val.")
    flags.DEFINE_integer("max_train_examples", None, "Cap on the train split (quick runs).")
    flags.DEFINE_integer("epochs", d.epochs, "Epochs (ignored when --steps is set).")
    flags.DEFINE_integer("steps", None, "Total optimizer steps (overrides --epochs).")
    flags.DEFINE_integer("steps_per_epoch", None, "Default: train examples // batch_size.")
    flags.DEFINE_integer("batch_size", d.batch_size, "Global batch size (all replicas).")
    flags.DEFINE_string(
        "sampler",
        d.sampler,
        "uniform, sandwich (BigNAS, in-place distillation), sandwich_ce, complexity_aware, "
        "performance_aware, elasticvit.",
    )
    flags.DEFINE_string("sampler_kwargs", "{}", "JSON dict of extra sampler arguments.")
    flags.DEFINE_integer("num_subnets", d.num_subnets, "Subnets per step (supernet slots).")
    flags.DEFINE_float("lr", d.lr, "Peak LR for a batch of --lr_reference_batch (scaled).")
    flags.DEFINE_float("warmup_lr", d.warmup_lr, "LR at step 0 (scaled like --lr).")
    flags.DEFINE_float("min_lr", d.min_lr, "Cosine floor and cool-down LR (scaled like --lr).")
    flags.DEFINE_integer("lr_reference_batch", d.lr_reference_batch, "0: no LR scaling.")
    flags.DEFINE_integer("warmup_steps", d.warmup_steps, "Linear warm-up steps.")
    flags.DEFINE_integer("cooldown_steps", d.cooldown_steps, "Final steps at --min_lr.")
    flags.DEFINE_float(
        "weight_decay", d.weight_decay, "AdamW decay (selective, docs/method.md#training-recipe)."
    )
    flags.DEFINE_float("agc_clip", d.agc_clip, "Adaptive gradient clipping factor (0: off).")
    flags.DEFINE_float("ema_decay", d.ema_decay, "EMA decay (0: off; official 0.99985).")
    flags.DEFINE_bool("ema_warmup", d.ema_warmup, "EMA decay min(decay, (1+n)/(10+n)).")
    flags.DEFINE_bool(
        "skip_unused_updates", d.skip_unused_updates, "No AdamW update for unused variables."
    )
    flags.DEFINE_string(
        "teacher", d.teacher, "Comma list of .keras teachers or keras.applications names."
    )
    flags.DEFINE_float("teacher_temperature", d.teacher_temperature, "Teacher temperature.")
    flags.DEFINE_float("label_smoothing", d.label_smoothing, "Label smoothing without teachers.")
    flags.DEFINE_string(
        "mixed_precision",
        d.mixed_precision,
        "float32, bfloat16 or float16 (dynamic loss scaling): the blocks' compute precision; "
        "variables, optimizer state, norm statistics, softmax and losses stay float32.",
    )
    flags.DEFINE_string("strategy", d.strategy, f"tf.distribute strategy: {', '.join(STRATEGIES)}.")
    flags.DEFINE_integer("cpu_devices", d.cpu_devices, "Split the CPU into N logical devices.")
    flags.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Steps between checkpoints.")
    flags.DEFINE_integer("keep_checkpoints", d.keep_checkpoints, "Checkpoints kept.")
    flags.DEFINE_integer("eval_every", d.eval_every, "Steps between min/max evaluations (0: end).")
    flags.DEFINE_string("eval_split", d.eval_split, "test, val or search.")
    flags.DEFINE_integer("eval_batches", d.eval_batches, "Eval batches (0: whole split).")
    flags.DEFINE_integer("calib_batches", d.calib_batches, "BN recalibration batches.")
    flags.DEFINE_integer("log_every", d.log_every, "Steps between TensorBoard scalars.")
    flags.DEFINE_bool("deterministic", d.deterministic, "Enable TF op determinism.")
    flags.DEFINE_integer("seed", d.seed, "Seed (weights, sampler, data order).")
    flags.DEFINE_bool("grad_cosine", d.grad_cosine, "Log gradient-conflict cosines.")
    flags.DEFINE_integer("verbose", d.verbose, "Keras progress bar: 0, 1 or 2.")
    flags.DEFINE_bool("log_archs", d.log_archs, "Write the sampled archs to arch_log.jsonl.")
    flags.DEFINE_string("graph_optimizations", d.graph_optimizations, "Grappler: auto, on, off.")


def config_from_flags():
    """Builds the ``TrainConfig``: the preset, then every flag given on the command line."""
    from elasticvit_tf import cli
    from elasticvit_tf.train.train_lib import TrainConfig

    if FLAGS.preset not in ("none", "demo"):
        raise ValueError(f"unknown --preset {FLAGS.preset!r}; expected none or demo")
    base = TrainConfig.demo() if FLAGS.preset == "demo" else TrainConfig()
    values = cli.values_from_flags(
        TrainConfig, FLAGS, only_present=FLAGS.preset != "none", keep=("model_dir",)
    )
    if "sampler_kwargs" in values:
        try:
            values["sampler_kwargs"] = json.loads(values["sampler_kwargs"])
        except json.JSONDecodeError as e:
            raise ValueError(f"--sampler_kwargs is not a JSON object: {e}") from None
        if not isinstance(values["sampler_kwargs"], dict):
            raise ValueError("--sampler_kwargs must be a JSON object")
    return dataclasses.replace(base, **values)


def command_line(config) -> str:
    """The ``elasticvit-train`` command that runs ``config`` (a ``TrainConfig``; flags left at
    their defaults omitted)."""
    from elasticvit_tf import cli
    from elasticvit_tf.train.train_lib import TrainConfig

    return cli.command(
        "elasticvit-train", config.to_dict(), TrainConfig().to_dict(), always=("model_dir",)
    )


def main(argv) -> int:
    from elasticvit_tf import cli

    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value")
    from elasticvit_tf.train import train_lib

    config = config_from_flags()
    train_lib.validate_config(config)
    cli.check_output_dir(config.model_dir, "model_dir")
    result = train_lib.train(config)
    print(json.dumps(result, indent=2, default=str))
    return 0


def run() -> None:
    """Console-script entry point (``elasticvit-train``)."""
    from elasticvit_tf import cli

    cli.run("elasticvit-train", main, define_flags, required=("model_dir",))


if __name__ == "__main__":
    run()

"""GPU readiness check of the ``elasticvit-train`` step: one device, then Mirrored over all
visible GPUs.

For each strategy: builds the supernet and the trainer exactly as ``elasticvit-train`` does
(``train_lib.make_trainer``, 4 slots, a random arch per slot and step, written from the host as
``SamplerCallback`` does), runs ``--warmup`` steps, then times ``--steps`` steps and reports
steps/s, images/s, the peak GPU memory (``tf.config.experimental.get_memory_info``) and the
traces of the step after warm-up (expected: 0). Exits 0 with a message when TensorFlow sees no
GPU.

Usage:
  python benchmarks/gpu_check.py [--space=elasticvit] [--batch=64] [--steps=20] [--warmup=3]
Writes benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from elasticvit_tf.space import get_space
from elasticvit_tf.supernet import ElasticSupernet
from elasticvit_tf.train import train_lib


def run(strategy, label, args):
    space = get_space(args.space)
    n_rep = strategy.num_replicas_in_sync
    batch = args.batch * n_rep
    config = train_lib.TrainConfig(
        model_dir="unused",
        space=args.space,
        num_subnets=4,
        batch_size=batch,
        skip_unused_updates=args.skip_unused_updates,
    )
    with strategy.scope():
        net = ElasticSupernet(space, args.num_classes, num_slots=4)
        _, trainer = train_lib.make_trainer(config, net, 1e-4)
    trainer.set_roles(["uniform"] * 3 + ["min"])
    r = max(space.resolutions)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, r, r, 3)).astype("float32")
    y = rng.integers(0, args.num_classes, size=batch).astype("int32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    it = iter(strategy.experimental_distribute_dataset(ds))

    @tf.function
    def step(iterator):
        out = strategy.run(trainer.train_step, args=(next(iterator),))
        return strategy.reduce("MEAN", out["loss"], axis=None)

    def one():
        net.set_archs([space.sample(rng) for _ in range(3)] + [space.min_arch()])
        return float(step(it))

    for _ in range(args.warmup):
        one()
    traces = step.experimental_get_tracing_count()
    for d in range(n_rep):
        tf.config.experimental.reset_memory_stats(f"GPU:{d}")
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = one()
    dt = time.perf_counter() - t
    peak = [tf.config.experimental.get_memory_info(f"GPU:{d}")["peak"] for d in range(n_rep)]
    row = {
        "strategy": label,
        "replicas": n_rep,
        "space": args.space,
        "global_batch": batch,
        "steps": args.steps,
        "steps_per_s": args.steps / dt,
        "images_per_s": args.steps * batch / dt,
        "peak_memory_gib": [p / 2**30 for p in peak],
        "retraces_after_warmup": step.experimental_get_tracing_count() - traces,
        "final_loss": loss,
        "skip_unused_updates": args.skip_unused_updates,
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="elasticvit")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64, help="per replica")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--skip_unused_updates", action="store_true")
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "gpu_check.json")
    )
    args = p.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("gpu_check: TensorFlow sees no GPU; nothing to check (run it on a GPU machine)")
        return 0
    for g in gpus:
        tf.config.experimental.set_memory_growth(g, True)
    rows = [run(tf.distribute.OneDeviceStrategy("/gpu:0"), "one_device", args)]
    if len(gpus) > 1:
        rows.append(run(tf.distribute.MirroredStrategy(), "mirrored", args))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "benchmark": "gpu_check",
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "tensorflow": tf.__version__,
                "gpus": [g.name for g in gpus],
                "rows": rows,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

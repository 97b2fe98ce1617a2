"""Sampling ablation (issue 4 item 7): uniform vs sandwich vs elasticvit sampling, in miniature.

Every sampler trains a supernet with the same data, seed, steps and 4 subnets per step
(sandwich = max + 2 random + min). Each supernet is then evaluated on the same subnets:
``--per_bin`` random subnets in each of ``--bins`` FLOPs bins (equal-count bins of the
space's uniform FLOPs distribution), EMA weights, BN recalibrated, top-1 on the test split.
Printed: accuracy per bin per sampler, and the mean gradient cosine between consecutive steps'
update directions (and between consecutive subnets within a step). Written:
``benchmarks/results/sampling_ablation_<space>_<dataset>.json``.

    python benchmarks/sampling_ablation.py --space=tiny --dataset=digits --steps=150
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time

import numpy as np


def _bins(space, n_bins, rng):
    from elasticvit_tf.flops import count_flops

    flops = np.array([count_flops(space, space.sample(rng)) for _ in range(2000)])
    return np.quantile(flops, np.linspace(0, 1, n_bins + 1))


def _subnets(space, edges, per_bin, rng, max_tries=20000):
    from elasticvit_tf.flops import count_flops

    chosen = [[] for _ in range(len(edges) - 1)]
    for _ in range(max_tries):
        a = space.sample(rng)
        f = count_flops(space, a)
        i = int(np.clip(np.searchsorted(edges, f, side="right") - 1, 0, len(chosen) - 1))
        if len(chosen[i]) < per_bin:
            chosen[i].append((a, f))
        if all(len(c) == per_bin for c in chosen):
            break
    return chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--samplers", default="uniform,sandwich,elasticvit")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--steps_per_epoch", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--bins", type=int, default=5)
    p.add_argument("--per_bin", type=int, default=5)
    p.add_argument("--calib_batches", type=int, default=5)
    p.add_argument("--eval_batches", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work_dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import keras

    from elasticvit_tf import data as data_lib
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.space import get_space
    from elasticvit_tf.train import callbacks as cb
    from elasticvit_tf.train import train_lib

    space = get_space(args.space)
    rng = np.random.default_rng(args.seed)
    edges = _bins(space, args.bins, rng)
    subnets = _subnets(space, edges, args.per_bin, rng)
    work = args.work_dir or tempfile.mkdtemp(prefix="sampling_ablation_")
    results = {}
    for name in args.samplers.split(","):
        logged = []

        class Cosines(keras.callbacks.Callback):
            def __init__(self, sink):
                super().__init__()
                self.sink = sink

            def on_train_batch_end(self, batch, logs=None):
                if logs and "grad_cos_step" in logs:
                    self.sink.append((float(logs["grad_cos"]), float(logs["grad_cos_step"])))

        cfg = train_lib.TrainConfig(
            model_dir=os.path.join(work, name),
            space=args.space,
            dataset=args.dataset,
            sampler=name,
            steps=args.steps,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_reference_batch=0,
            warmup_steps=max(1, args.steps // 15),
            min_lr=args.lr / 50,
            ema_decay=0.99,
            ema_warmup=True,
            label_smoothing=0.0,
            checkpoint_every=0,
            calib_batches=args.calib_batches,
            eval_batches=args.eval_batches or 0,
            search_size=100 if args.dataset == "digits" else 5000,
            seed=args.seed,
            grad_cosine=True,
            verbose=0,
        )
        t0 = time.perf_counter()
        train_result = train_lib.train(cfg, extra_callbacks=[Cosines(logged)])
        cos_slots = [c for c, _ in logged]
        cos_steps = [c for _, c in logged[1:]]  # step 0 has no previous update
        train_s = time.perf_counter() - t0
        net, config = md.load_supernet(cfg.model_dir, args.space, use_ema=True)
        dcfg = data_lib.DataConfig.from_dict(config["data"])
        # calibration and test batches of every evaluation from one read of the data set
        make = functools.partial(data_lib.make_dataset, dcfg, cache=data_lib.DataCache(1))

        def calib(make=make):
            return make("train", args.batch_size, training=True, repeat=True, seed=args.seed + 1)

        def test(make=make):
            ds = make("test", 256, training=False)
            return ds.take(args.eval_batches) if args.eval_batches else ds

        evaluator = cb.EmaEvaluator(net, None, calib, test, args.calib_batches)
        per_bin = []
        for i, group in enumerate(subnets):
            accs = [evaluator({"a": a})["a"] for a, _ in group]
            per_bin.append(
                {
                    "bin": i,
                    "mflops": [float(edges[i]), float(edges[i + 1])],
                    "top1": accs,
                    "mean_top1": float(np.mean(accs)) if accs else None,
                }
            )
        results[name] = {
            "bins": per_bin,
            "mean_top1": float(np.mean([b["mean_top1"] for b in per_bin if b["top1"]])),
            "grad_cos_consecutive_steps": float(np.mean(cos_steps)) if cos_steps else None,
            "grad_cos_consecutive_subnets": float(np.mean(cos_slots)) if cos_slots else None,
            "min_top1": train_result["min_top1"],
            "max_top1": train_result["max_top1"],
            "train_seconds": train_s,
        }
        print(
            f"{name}: trained in {train_s:.0f} s, mean top1 {results[name]['mean_top1']:.4f}",
            flush=True,
        )

    names = list(results)
    print()
    print("| FLOPs bin (M) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i in range(args.bins):
        lo, hi = edges[i], edges[i + 1]
        cells = [f"{results[n]['bins'][i]['mean_top1']:.3f}" for n in names]
        print(f"| {lo:.2f}-{hi:.2f} | " + " | ".join(cells) + " |")
    print("| mean | " + " | ".join(f"{results[n]['mean_top1']:.3f}" for n in names) + " |")
    print(
        "| grad cos (consecutive steps) | "
        + " | ".join(f"{results[n]['grad_cos_consecutive_steps']:.3f}" for n in names)
        + " |"
    )
    print(
        "| grad cos (consecutive subnets) | "
        + " | ".join(f"{results[n]['grad_cos_consecutive_subnets']:.3f}" for n in names)
        + " |"
    )
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"sampling_ablation_{args.space}_{args.dataset}.json",
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "host": platform.node(),
                "cpu_count": os.cpu_count(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "bin_edges_mflops": [float(e) for e in edges],
                "subnets": [[a.key() for a, _ in g] for g in subnets],
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

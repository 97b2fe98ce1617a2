"""Sampling ablation (issue 16): uniform vs sandwich (BigNAS) vs ElasticViT sampling, paired.

The protocol is written down in benchmarks/README.md ("sampling_ablation.py") and fixed in
``PROTOCOL`` below: the same training for every sampler but the sampler and the seed, a fixed
evaluation set per FLOPs level (the level's min arch + archs drawn uniformly in the level's
bin; the subset dominating the min arch reported apart), identical BN recalibration, and
per-level paired differences vs uniform with standard errors.

Every finished run (sampler, seed) is written to the JSON at once; a rerun skips finished runs
and resumes an interrupted training from its checkpoint; ``--report_only`` re-renders.

    python benchmarks/sampling_ablation.py                 # the full protocol
    python benchmarks/sampling_ablation.py --quick --out /tmp/ablation_quick.json
    python benchmarks/sampling_ablation.py --report_only
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import sys
import time
from typing import Any, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

PROTOCOL: dict[str, Any] = {
    "space": "demo",
    "dataset": "fashion_mnist",
    "image_size": 28,
    "augment": "none",
    "batch_size": 128,
    "steps": 1000,
    "samplers": ["uniform", "sandwich", "elasticvit"],
    "seeds": [0, 1],
    "num_subnets": 4,
    "search_size": 5000,
    "eval_seed": 1234,
    "per_level": 8,
    "uniform_space": 12,
    "calib_batches": 20,
    "calib_seed": 77,
    "eval_batch_size": 500,
    "test_images": None,  # None: the whole test split
    "search_images": None,
}
QUICK: dict[str, Any] = {
    **PROTOCOL,
    "space": "tiny",
    "dataset": "digits",
    "image_size": None,
    "batch_size": 32,
    "steps": 24,
    "seeds": [0],
    "search_size": 100,
    "per_level": 2,
    "uniform_space": 2,
    "calib_batches": 2,
    "eval_batch_size": 128,
}
BASELINE = "uniform"


# ------------------------------------------------------------------- evaluation set (no TF)
def evaluation_set(space, per_level: int, uniform_space: int, seed: int) -> dict[str, Any]:
    """The fixed evaluation set: per FLOPs level the level's min arch + ``per_level`` distinct
    archs drawn uniformly within the level's bin (uniform over the whole space conditioned on
    the bin), each flagged whether it dominates the level's min arch; plus ``uniform_space``
    archs uniform over the whole space."""
    from elasticvit_tf.flops import count_flops
    from elasticvit_tf.sampling.level_samplers import dominates
    from elasticvit_tf.sampling.level_tables import BinSampler

    rng = np.random.default_rng(seed)
    proposal = BinSampler(space, None)
    levels = []
    for f in space.flops_levels:
        lo, hi = space.level_bin(f)
        m = space.select_min_arch(f)
        archs, keys = [m], {m.key()}
        for _ in range(50 * per_level):
            if len(archs) > per_level:
                break
            a = proposal.sample_in_bin(rng, lo, hi)
            if a.key() not in keys:
                archs.append(a)
                keys.add(a.key())
        levels.append(
            {
                "level": float(f),
                "bin": [float(lo), float(hi)],
                "archs": [
                    {
                        "key": a.key(),
                        "arch": a.to_dict(),
                        "mflops": float(count_flops(space, a)),
                        "is_min": i == 0,
                        "dominates_min": dominates(a, m),
                    }
                    for i, a in enumerate(archs)
                ],
            }
        )
    flat = [space.sample(rng) for _ in range(uniform_space)]
    return {
        "seed": int(seed),
        "levels": levels,
        "uniform_space": [
            {"key": a.key(), "arch": a.to_dict(), "mflops": float(count_flops(space, a))}
            for a in flat
        ],
    }


def eval_archs(eval_set: dict[str, Any]) -> dict[str, dict]:
    """key -> arch dict of every arch of the evaluation set (each once)."""
    out = {}
    for lvl in eval_set["levels"]:
        for e in lvl["archs"]:
            out[e["key"]] = e["arch"]
    for e in eval_set["uniform_space"]:
        out[e["key"]] = e["arch"]
    return out


# ---------------------------------------------------------------------------- statistics
def mean_se(values) -> dict[str, Optional[float]]:
    """Mean and standard error (sample std / sqrt(n)) of a list; None where undefined."""
    v = np.asarray(list(values), dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": float(v.mean()), "se": se, "n": n}


def _level_keys(level: dict, subset: str) -> list[str]:
    if subset == "dominating":
        return [e["key"] for e in level["archs"] if e["dominates_min"]]
    return [e["key"] for e in level["archs"]]


def paired(runs: dict, eval_set: dict, sampler: str, baseline: str = BASELINE) -> dict:
    """Per level: differences top1(sampler) - top1(baseline) over (seed, arch) pairs present in
    both, for all archs of the level and for the dominating subset."""
    out = {}
    for lvl in eval_set["levels"]:
        row = {}
        for subset in ("all", "dominating"):
            diffs = []
            for run in runs.values():
                if run["sampler"] != sampler:
                    continue
                base = runs.get(run_id(baseline, run["seed"]))
                if base is None:
                    continue
                for k in _level_keys(lvl, subset):
                    if k in run["top1"] and k in base["top1"]:
                        diffs.append(run["top1"][k] - base["top1"][k])
            row[subset] = mean_se(diffs)
        out[f"{lvl['level']:g}"] = row
    return out


def summarize(doc: dict) -> dict:
    """Tables of the finished runs: per level mean top-1 per sampler (all / dominating),
    best-of-level, the uniform-over-space row, diagnostics and the paired differences."""
    runs, eval_set = doc["runs"], doc["eval_set"]
    samplers = [
        s for s in doc["protocol"]["samplers"] if any(r["sampler"] == s for r in runs.values())
    ]
    by = collections.defaultdict(list)
    for r in runs.values():
        by[r["sampler"]].append(r)
    levels = {}
    for lvl in eval_set["levels"]:
        row = {}
        for s in samplers:
            cell = {}
            for subset in ("all", "dominating"):
                keys = _level_keys(lvl, subset)
                cell[subset] = mean_se(r["top1"][k] for r in by[s] for k in keys if k in r["top1"])
            best = []
            for r in by[s]:  # chosen on the search split, reported on test
                keys = [k for k in _level_keys(lvl, "all") if k in r["search_top1"]]
                if keys:
                    best.append(r["top1"][max(keys, key=lambda k: r["search_top1"][k])])
            cell["best_of_level"] = mean_se(best)
            row[s] = cell
        levels[f"{lvl['level']:g}"] = row
    flat_keys = [e["key"] for e in eval_set["uniform_space"]]
    summary = {
        "samplers": samplers,
        "levels": levels,
        "uniform_space": {
            s: mean_se(r["top1"][k] for r in by[s] for k in flat_keys if k in r["top1"])
            for s in samplers
        },
        "diagnostics": {
            s: {
                "grad_cos_consecutive_steps": mean_se(r["grad_cos_step"] for r in by[s]),
                "grad_cos_within_step": mean_se(r["grad_cos_slots"] for r in by[s]),
                "train_seconds": mean_se(r["train_seconds"] for r in by[s]),
            }
            for s in samplers
        },
    }
    summary["paired"] = {s: paired(runs, eval_set, s) for s in samplers if s != BASELINE}
    wins = {}
    for s, rows in summary["paired"].items():
        wins[s] = sum(
            1 for v in rows.values() if v["all"]["mean"] is not None and v["all"]["mean"] >= 0
        )
    summary["levels_at_least_uniform"] = wins
    return summary


def _fmt(ms: dict, scale: float = 100.0, signed: bool = False) -> str:
    if ms["mean"] is None:
        return "–"
    m = f"{ms['mean'] * scale:+.2f}" if signed else f"{ms['mean'] * scale:.2f}"
    return m + (f" ± {ms['se'] * scale:.2f}" if ms["se"] is not None else "")


def _table(title: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    lines = ["", title, ""] if title else [""]
    lines += ["| " + " | ".join(columns) + " |", "|---|" + "---|" * (len(columns) - 1)]
    return lines + [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]


def render(doc: dict) -> str:
    """Markdown tables of ``summarize(doc)`` (top-1 in %, mean ± standard error)."""
    sm = summarize(doc)
    ss = sm["samplers"]
    others = [s for s in ss if s != BASELINE]
    level_col = ["level (MFLOPs)"]
    rows = [(lv, [_fmt(row[s]["all"]) for s in ss]) for lv, row in sm["levels"].items()]
    rows.append(("uniform over the space (secondary)", [_fmt(sm["uniform_space"][s]) for s in ss]))
    lines = [f"runs: {len(doc['runs'])} ({', '.join(sorted(doc['runs']))})"]
    lines += _table(
        "Mean test top-1 (%) per FLOPs level, all evaluated archs (min arch + in-bin archs):",
        level_col + ss,
        rows,
    )
    for subset, title in (("all", "all archs"), ("dominating", "archs dominating the min arch")):
        rows = []
        for lv in sm["levels"]:
            cells = [sm["paired"][s][lv][subset] for s in others]
            n = max([c["n"] for c in cells] or [0])
            rows.append((lv, [_fmt(c, signed=True) for c in cells] + [str(n)]))
        lines += _table(
            f"Paired difference vs {BASELINE} (top-1 points, {title}):",
            level_col + others + ["pairs"],
            rows,
        )
    rows = [(lv, [_fmt(row[s]["best_of_level"]) for s in ss]) for lv, row in sm["levels"].items()]
    lines += _table(
        "Best-of-level (chosen on the search split, test top-1 %):", level_col + ss, rows
    )
    diag = sm["diagnostics"]
    rows = [
        (name, [_fmt(diag[s][name], scale=1.0) for s in ss])
        for name in ("grad_cos_consecutive_steps", "grad_cos_within_step", "train_seconds")
    ]
    lines += _table("", ["diagnostic"] + ss, rows)
    lines.append("")
    for s, w in sm["levels_at_least_uniform"].items():
        lines.append(f"{s}: paired mean >= {BASELINE} at {w} of {len(sm['levels'])} levels")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- files
def run_id(sampler: str, seed: int) -> str:
    return f"{sampler}/seed{seed}"


def write_atomic(path: str, doc: dict) -> None:
    from elasticvit_tf.fileio import write_json_atomic

    write_json_atomic(path, doc, indent=1)


def add_run(path: str, protocol: dict, eval_set: dict, rid: str, run: dict) -> dict:
    """Adds one finished run to the JSON under an exclusive lock, re-reading the file first so
    that shards running in parallel (``--runs``) keep each other's runs. Returns the document."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = open_doc(path, protocol, eval_set)
        doc["runs"][rid] = run
        doc["summary"] = summarize(doc)
        doc["paired"] = doc["summary"]["paired"]
        write_atomic(path, doc)
    return doc


def open_doc(path: str, protocol: dict, eval_set: dict) -> dict:
    """The JSON document: the existing one when its protocol and evaluation set match (its
    finished runs are kept), else a new one. Raises ValueError on a mismatch."""
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
        if doc.get("protocol") != protocol or doc.get("eval_set") != eval_set:
            raise ValueError(
                f"{path} holds runs of another protocol or evaluation set; pass --out to write a "
                "new file (the protocol is not changed after seeing results)"
            )
        return doc
    return {
        "benchmark": "sampling_ablation",
        "protocol": protocol,
        "eval_set": eval_set,
        "runs": {},
    }


# ------------------------------------------------------------------------------ one run
def train_config(protocol: dict, sampler: str, seed: int, model_dir: str):
    from elasticvit_tf.train.train_lib import TrainConfig

    return TrainConfig.demo(
        model_dir,
        space=protocol["space"],
        dataset=protocol["dataset"],
        image_size=protocol["image_size"],
        augment=protocol["augment"],
        batch_size=protocol["batch_size"],
        steps=protocol["steps"],
        warmup_steps=max(1, min(100, protocol["steps"] // 10)),  # the demo's 100 at 1000 steps
        sampler=sampler,
        num_subnets=protocol["num_subnets"],
        search_size=protocol["search_size"],
        seed=seed,
        grad_cosine=True,
        checkpoint_every=max(50, protocol["steps"] // 5),
        calib_batches=2,  # the run's own final min/max evaluation only
        eval_batches=2,
        verbose=0,
    )


def run_one(protocol: dict, eval_set: dict, sampler: str, seed: int, work_dir: str) -> dict:
    import keras

    from elasticvit_tf import data as data_lib
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.arch import ArchConfig
    from elasticvit_tf.extract import subnet_top1
    from elasticvit_tf.flops import count_flops
    from elasticvit_tf.space import get_space
    from elasticvit_tf.train import train_lib

    space = get_space(protocol["space"])
    cfg = train_config(protocol, sampler, seed, os.path.join(work_dir, sampler, f"seed{seed}"))
    diag = {"cos_step": [], "cos_slots": [], "flops": [], "res": collections.Counter()}

    class Diagnostics(keras.callbacks.Callback):
        """Gradient cosines from the step's logs; FLOPs and resolution of the trained archs."""

        def on_train_batch_end(self, batch, logs=None):
            if logs and "grad_cos_step" in logs:
                diag["cos_slots"].append(float(logs["grad_cos"]))
                diag["cos_step"].append(float(logs["grad_cos_step"]))
            net = self.model.net
            for slot in range(net.num_slots):
                a = net.get_arch(slot)
                diag["flops"].append(count_flops(space, a))
                diag["res"][a.resolution] += 1

    t0 = time.perf_counter()
    result = train_lib.train(cfg, extra_callbacks=[Diagnostics()])
    train_s = time.perf_counter() - t0

    net, config = md.load_supernet(cfg.model_dir, protocol["space"], use_ema=True)
    dcfg = data_lib.DataConfig.from_dict(config["data"])
    bs = protocol["eval_batch_size"]

    cache = data_lib.DataCache(1)  # one read of the data set for every evaluation

    def split(name, images):
        ds = data_lib.make_dataset(dcfg, name, bs, training=False, cache=cache)
        return ds.take(math.ceil(images / bs)) if images else ds

    test, search = split("test", protocol["test_images"]), split(
        "search", protocol["search_images"]
    )
    top1, search_top1 = {}, {}
    t1 = time.perf_counter()
    for key, arch in eval_archs(eval_set).items():
        calib = data_lib.make_dataset(
            dcfg,
            "train",
            protocol["batch_size"],
            training=True,
            repeat=True,
            seed=protocol["calib_seed"],
            cache=cache,
        )
        a = ArchConfig.from_dict(arch)
        top1[key] = subnet_top1(net, a, calib, protocol["calib_batches"], test)
        search_top1[key] = subnet_top1(net, a, calib, 0, search)  # BN already recalibrated
    # A resumed training logs only its own steps: the diagnostics cover what this process saw.
    lo, hi = count_flops(space, space.min_arch()), count_flops(space, space.max_arch())
    counts, edges = np.histogram(diag["flops"], bins=10, range=(lo, hi))
    skip = 1 if result["resumed_from_step"] == 0 else 0  # step 0 has no previous update
    return {
        "sampler": sampler,
        "seed": seed,
        "steps": result["step"],
        "resumed_from_step": result["resumed_from_step"],
        "train_seconds": train_s,
        "eval_seconds": time.perf_counter() - t1,
        "top1": top1,
        "search_top1": search_top1,
        "grad_cos_step": float(np.mean(diag["cos_step"][skip:])) if diag["cos_step"] else None,
        "grad_cos_slots": float(np.mean(diag["cos_slots"])) if diag["cos_slots"] else None,
        "train_flops_hist": {"edges": [float(e) for e in edges], "counts": counts.tolist()},
        "train_resolution_hist": {str(k): v for k, v in sorted(diag["res"].items())},
        "final_min_top1": result["min_top1"],
        "final_max_top1": result["max_top1"],
    }


# ----------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny space, digits, a few steps")
    p.add_argument("--samplers", default=None, help="comma list (default: the protocol's)")
    p.add_argument("--seeds", default=None, help="comma list (default: the protocol's)")
    p.add_argument("--steps", type=int, default=None, help="override (smoke runs only)")
    p.add_argument(
        "--runs",
        default=None,
        help="comma list of sampler/seedN runs this process does (default: all of the protocol's); "
        "shards started in parallel with the same protocol share one JSON",
    )
    p.add_argument("--out", default=None)
    p.add_argument("--work_dir", default=None)
    p.add_argument("--report_only", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    protocol = dict(QUICK if args.quick else PROTOCOL)
    try:
        if args.samplers:
            protocol["samplers"] = [s for s in args.samplers.split(",") if s]
        if args.seeds:
            protocol["seeds"] = [int(s) for s in args.seeds.split(",") if s]
        if args.steps is not None:
            if args.steps < 1:
                raise ValueError(f"--steps={args.steps}; expected >= 1")
            protocol["steps"] = args.steps
        all_runs = [run_id(m, s) for s in protocol["seeds"] for m in protocol["samplers"]]
        only = [r for r in (args.runs or "").split(",") if r] or all_runs
        bad = [r for r in only if r not in all_runs]
        if bad:
            raise ValueError(
                f"--runs={args.runs}: {bad[0]} is not one of the protocol's {all_runs}"
            )
    except ValueError as e:
        print(f"sampling_ablation: {e}", file=sys.stderr)
        return 2
    name = "sampling_ablation_quick" if args.quick else "sampling_ablation"
    out = args.out or os.path.join(RESULTS, f"{name}.json")
    if args.report_only:
        if not os.path.exists(out):
            print(f"--report_only: {out} does not exist; run the ablation first", file=sys.stderr)
            return 2
        with open(out) as f:
            print(render(json.load(f)))
        return 0

    from elasticvit_tf.sampling.registry import SAMPLER_NAMES
    from elasticvit_tf.space import get_space

    unknown = [s for s in protocol["samplers"] if s not in SAMPLER_NAMES]
    if unknown or BASELINE not in protocol["samplers"]:
        print(
            f"--samplers={','.join(protocol['samplers'])}: expected names from "
            f"{list(SAMPLER_NAMES)} including {BASELINE!r} (the paired baseline)",
            file=sys.stderr,
        )
        return 2
    space = get_space(protocol["space"])
    eval_set = evaluation_set(
        space, protocol["per_level"], protocol["uniform_space"], protocol["eval_seed"]
    )
    try:
        doc = open_doc(out, protocol, eval_set)
    except ValueError as e:
        print(f"sampling_ablation: {e}", file=sys.stderr)
        return 2
    work = args.work_dir or os.path.join(RESULTS, f"{name}_work")
    for seed in protocol["seeds"]:
        for sampler in protocol["samplers"]:
            rid = run_id(sampler, seed)
            if rid not in only:
                continue
            if rid in doc["runs"]:
                print(f"{rid}: done earlier, kept", flush=True)
                continue
            print(f"{rid}: training {protocol['steps']} steps", flush=True)
            run = run_one(protocol, eval_set, sampler, seed, work)
            run.update(
                date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                host=platform.node(),
                loadavg=os.getloadavg()[0],
            )
            doc = add_run(out, protocol, eval_set, rid, run)
            print(
                f"{rid}: trained {run['train_seconds']:.0f} s, evaluated "
                f"{run['eval_seconds']:.0f} s; wrote {out}",
                flush=True,
            )
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

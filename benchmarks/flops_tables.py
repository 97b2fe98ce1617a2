"""FLOPs-level table build rate: accepted archs/second per level; prints a table, writes JSON.

For every level of each space: builds a table of ``--size`` distinct archs with the vectorised
proposal (``flops_tables.build_table``, no cache) and reports the acceptance rate, proposals
per second, accepted archs per second and the build time; also the per-arch cost of the
samplers' rejection fallback (``BinSampler.sample_in_bin``) and, for scale, the pure-Python
rate (``space.sample`` + ``flops.count_flops`` one arch at a time).

Usage: python benchmarks/flops_tables.py [--spaces demo,elasticvit] [--size 2000] [--draws N]
"""

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np

from elasticvit_tf.flops import count_flops
from elasticvit_tf.sampling import level_tables as ft
from elasticvit_tf.space import get_space


def _python_rate(space, level, seconds=1.0):
    """Pure-Python proposals/s and accepted/s (space.sample + count_flops)."""
    rng = np.random.default_rng(0)
    m = space.select_min_arch(level)
    lo, hi = space.level_bin(level)
    n = acc = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a = space.sample(rng, min_arch=m)
        acc += lo <= count_flops(space, a) <= hi
        n += 1
    dt = time.perf_counter() - t0
    return n / dt, acc / dt


def _proposal_rate(space, level, draws, batch=65536):
    """Vectorised proposal: (acceptance, draws/s, accepted/s, accepted per CPU-second)."""
    bs = ft.BinSampler(space, space.select_min_arch(level))
    lo, hi = ft.bin_macs(*space.level_bin(level))
    rng = np.random.default_rng(0)
    n = acc = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while n < draws:
        _, macs = bs.draw(rng, batch)
        acc += int(np.count_nonzero((macs >= lo) & (macs <= hi)))
        n += batch
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return acc / n, n / dt, acc / dt, acc / cpu


def _fallback_ms(space, level, n=20):
    bs = ft.BinSampler(space, space.select_min_arch(level))
    lo, hi = space.level_bin(level)
    rng = np.random.default_rng(0)
    bs.sample_in_bin(rng, lo, hi)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        bs.sample_in_bin(rng, lo, hi)
    return (time.perf_counter() - t0) / n * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spaces", default="demo,elasticvit")
    parser.add_argument("--size", type=int, default=ft.DEFAULT_TABLE_SIZE)
    parser.add_argument("--seed", type=int, default=ft.DEFAULT_TABLE_SEED)
    parser.add_argument("--draws", type=int, default=1 << 21, help="proposals per level")
    parser.add_argument("--python_seconds", type=float, default=1.0)
    args = parser.parse_args()

    rows = []
    header = (
        f"{'space':<11}{'level':>7}{'bin':>14}{'accept %':>9}{'draws/s':>10}{'acc/s':>10}"
        f"{'acc/cpu-s':>10}{'table s':>8}{'distinct':>9}{'fallback ms':>12}{'py acc/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name in args.spaces.split(","):
        space = get_space(name)
        for level in space.flops_levels:
            accept, draws_s, acc_s, acc_cpu = _proposal_rate(space, level, args.draws)
            t = ft.build_table(space, level, size=args.size, seed=args.seed)
            py_draws, py_acc = _python_rate(space, level, args.python_seconds)
            row = {
                "space": name,
                "level": level,
                "bin": [t.lo, t.hi],
                "acceptance": accept,
                "draws_per_second": draws_s,
                "accepted_per_second": acc_s,
                "accepted_per_cpu_second": acc_cpu,
                "table_size": args.size,
                "table_distinct": len(t),
                "table_complete": t.complete,
                "table_build_seconds": t.build_seconds,
                "fallback_ms_per_arch": _fallback_ms(space, level),
                "python_draws_per_second": py_draws,
                "python_accepted_per_second": py_acc,
            }
            rows.append(row)
            print(
                f"{name:<11}{level:>7g}{f'[{t.lo:g}, {t.hi:g}]':>14}{100 * accept:>9.4f}"
                f"{draws_s:>10.3g}{acc_s:>10.4g}{acc_cpu:>10.4g}{t.build_seconds:>8.2f}"
                f"{len(t):>9d}{row['fallback_ms_per_arch']:>12.2f}{py_acc:>9.3g}"
            )
    out = {
        "benchmark": "flops_tables",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "note": (
            "acc/s: in-bin proposals per wall second of the vectorised proposal; acc/cpu-s the "
            "same per CPU second (the machine may be shared); table s: wall time of "
            "build_table for `table_size` distinct archs (no cache)"
        ),
        "rows": rows,
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "flops_tables.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

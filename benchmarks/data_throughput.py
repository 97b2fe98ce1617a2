"""Input-pipeline throughput (images/s) per source and mode; prints a table, writes JSON.

Usage: python benchmarks/data_throughput.py [--batches 100] [--batch_size 128]
"""

import argparse
import datetime
import json
import os
import tempfile
import time

import numpy as np

from elasticvit_tf import data


def _folder_fixture(root, n_per_class=64, side=96):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(4):
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (side, side + 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, f"c{c}", f"{i}.jpg"), quality=90)
    return root


def _measure(config, split, batch_size, batches, training):
    ds = data.make_dataset(config, split, batch_size, training=training, repeat=True, seed=0)
    it = iter(ds)
    next(it)  # warm-up: tracing and first fill
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    return batches * batch_size / dt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args()

    cases = []
    fashion, notices = data.resolve_data_config(data.DataConfig())
    for n in notices:
        print("NOTE:", n)
    cases.append((fashion.dataset, fashion, True))
    cases.append((fashion.dataset + " eval", fashion, False))
    cases.append(("digits", data.DataConfig(dataset="digits", search_size=0), True))
    cases.append(
        (
            fashion.dataset + " imagenet-aug",
            data.DataConfig(**{**fashion.to_dict(), "augment": "imagenet"}),
            True,
        )
    )
    tmp = tempfile.mkdtemp()
    folder = data.DataConfig(
        dataset="folder:" + _folder_fixture(tmp), search_size=0, image_size=64, augment="imagenet"
    )
    cases.append(("folder jpeg 96x112 -> 64 imagenet-aug", folder, True))

    rows = []
    for name, config, training in cases:
        rate = _measure(config, "train", args.batch_size, args.batches, training)
        rows.append({"case": name, "training": training, "images_per_s": round(rate, 1)})
    print(f"{'case':45s} {'train':>6s} {'images/s':>10s}")
    for r in rows:
        print(f"{r['case']:45s} {str(r['training']):>6s} {r['images_per_s']:10.0f}")
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "batch_size": args.batch_size,
        "batches": args.batches,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    path = os.path.join(out_dir, "data_throughput.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()

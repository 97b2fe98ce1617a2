"""Are the LUT's block models the real subnet? TFLite latency of the block chain vs extract_subnet.

``export/lut_blocks.build_arch_model`` (the blocks the LUT measures, chained) and
``extract_subnet(ElasticSupernet(space), arch)`` (the exported model) are converted the same
way and timed alternately (3 sessions each, best session median). A ratio near 1 means the
LUT's ground truth and its blocks stand for what the export ships.

  python benchmarks/latency_crosscheck.py --space=demo --num_archs=3
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("space", "demo", "Space preset.")
    flags.DEFINE_integer("num_archs", 3, "Random archs to compare.")
    flags.DEFINE_integer("seed", 77, "Arch sampling seed.")
    flags.DEFINE_enum("clock", "wall", ["wall", "cpu"], "Timing clock (see lut_builder).")
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where the JSON goes.")


def main(argv):
    del argv
    from elasticvit_tf.export import lut_builder
    from elasticvit_tf.export.lut_blocks import build_arch_model
    from elasticvit_tf.extract import extract_subnet
    from elasticvit_tf.space import get_space
    from elasticvit_tf.supernet import ElasticSupernet

    space = get_space(FLAGS.space)
    net = ElasticSupernet(space, num_classes=space.num_classes, num_slots=1)
    rng = np.random.default_rng(FLAGS.seed)
    rows = []
    timing = lut_builder.MeasureConfig(1, 5, 30, 0.05, sessions=1, clock=FLAGS.clock)
    for _ in range(FLAGS.num_archs):
        arch = space.sample(rng)
        chain = lut_builder.convert_for_latency(build_arch_model(space, arch), "fp32")
        extracted = lut_builder.convert_for_latency(extract_subnet(net, arch), "fp32")
        t = {"chain": [], "extracted": []}
        for _ in range(3):
            for name, tfl in (("chain", chain), ("extracted", extracted)):
                t[name].append(lut_builder.time_model(tfl, timing))
        c = min(r["median_ms"] for r in t["chain"])
        e = min(r["median_ms"] for r in t["extracted"])
        rows.append({"arch": arch.key(), "chain_ms": c, "extracted_ms": e, "ratio": e / c})
        print(f"{arch.key()}: chain {c:.4f} ms, extracted {e:.4f} ms, ratio {e / c:.4f}")
    print(f"median ratio extracted / chain: {np.median([r['ratio'] for r in rows]):.4f}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    out = os.path.join(FLAGS.output_dir, f"latency_crosscheck_{FLAGS.space}_{FLAGS.clock}.json")
    with open(out, "w") as f:
        json.dump({"space": FLAGS.space, "clock": FLAGS.clock, "rows": rows}, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))

"""elasticvit-info: structure, MFLOPs and params of an arch or a published model.

Examples:
  elasticvit-info --arch=elastic_S1
  elasticvit-info --arch=path/to/arch.json --space=demo --json
  elasticvit-info --list_models
"""

from __future__ import annotations

import json
import sys

from absl import flags

from elasticvit_tf import arch as arch_lib
from elasticvit_tf import flops as flops_lib
from elasticvit_tf import space as space_lib


def define_flags() -> None:
    flags.DEFINE_string(
        "arch",
        None,
        "A published model name (see --list_models), a path to an ArchConfig JSON file, or "
        "'min'/'max' for the space's extremes.",
    )
    flags.DEFINE_string("space", "elasticvit", "Search space preset: elasticvit, demo or tiny.")
    flags.DEFINE_integer("num_classes", None, "Classes for FLOPs/params (default: the space's).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
    flags.DEFINE_bool("list_models", False, "List the named published models and exit.")


class UsageError(ValueError):
    """Bad user input: reported on one line with exit code 2."""


def resolve_arch(value: str, space: space_lib.SearchSpace) -> arch_lib.ArchConfig:
    """Resolves a name, 'min'/'max' or a JSON path into an arch of ``space``."""
    try:
        return space_lib.resolve_arch(value, space)
    except ValueError as e:
        raise UsageError(str(e)) from None


def describe(space: space_lib.SearchSpace, a: arch_lib.ArchConfig, num_classes=None) -> dict:
    """A JSON-able description: structure per stage, MFLOPs and params."""
    fb = flops_lib.flops_breakdown(space, a, num_classes)
    pb = flops_lib.params_breakdown(space, a, num_classes)
    sides = space.feature_sides(a.resolution)
    stages = []
    for i, (sa, ss) in enumerate(zip(a.stages, space.stages)):
        d = {"stage": i, "type": ss.kind, "feature_size": sides[i + 1], **sa.__dict__}
        d = {k: v for k, v in d.items() if v is not None}
        if ss.is_transformer:
            d["heads"] = sa.width // space.head_dim
        else:
            d["se"] = ss.se
        d["mflops"] = round(fb[f"stage{i}"], 4)
        stages.append(d)
    return {
        "space": space.name,
        "key": a.key(),
        "resolution": a.resolution,
        "stem": {**a.stem.__dict__, "feature_size": sides[0], "mflops": round(fb["stem"], 4)},
        "stages": stages,
        "head": {"mflops": round(fb["head"], 4)},
        "mflops": round(sum(fb.values()), 4),
        "params": int(sum(pb.values())),
        "params_m": round(sum(pb.values()) / 1e6, 4),
        "arch": a.to_dict(),
    }


def _table(d: dict) -> str:
    lines = [
        f"space {d['space']}  resolution {d['resolution']}  key {d['key']}",
        f"{'part':<8}{'type':<6}{'width':>6}{'depth':>6}{'e/k or mlp/v':>14}{'side':>6}"
        f"{'MFLOPs':>10}",
    ]
    s = d["stem"]
    lines.append(
        f"{'stem':<8}{'conv':<6}{s['width']:>6}{s['depth']:>6}{'k' + str(s['kernel']):>14}"
        f"{s['feature_size']:>6}{s['mflops']:>10.2f}"
    )
    for st in d["stages"]:
        knobs = (
            f"m{st['mlp_ratio']}/v{st['v_scale']}"
            if st["type"] == "T"
            else f"e{st['expand_ratio']}/k{st['kernel']}"
        )
        lines.append(
            f"{'stage' + str(st['stage']):<8}{st['type']:<6}{st['width']:>6}{st['depth']:>6}"
            f"{knobs:>14}{st['feature_size']:>6}{st['mflops']:>10.2f}"
        )
    lines.append(f"{'head':<8}{'':<6}{'':>6}{'':>6}{'':>14}{'':>6}{d['head']['mflops']:>10.2f}")
    lines.append(f"total: {d['mflops']:.2f} MFLOPs (MACs), {d['params_m']:.3f} M params")
    return "\n".join(lines)


def main(argv) -> int:
    del argv
    FLAGS = flags.FLAGS
    try:
        if FLAGS.list_models:
            space = space_lib.get_space("elasticvit")
            rows = []
            for name in arch_lib.PUBLISHED_MODEL_NAMES:
                a = space_lib.get_published_arch(name)
                rows.append(
                    {
                        "name": name,
                        "resolution": a.resolution,
                        "mflops": round(flops_lib.count_flops(space, a), 2),
                        "params_m": round(flops_lib.count_params(space, a) / 1e6, 3),
                    }
                )
            if FLAGS.json:
                print(json.dumps(rows))
            else:
                for r in rows:
                    print(
                        f"{r['name']:<14} r={r['resolution']:<4} {r['mflops']:>8.2f} MFLOPs "
                        f"{r['params_m']:>7.3f} M params"
                    )
            return 0
        if not FLAGS.arch:
            raise UsageError(
                "--arch is required (a model name, 'min'/'max' or a JSON path), "
                "or pass --list_models"
            )
        try:
            space = space_lib.get_space(FLAGS.space)
        except ValueError as e:
            raise UsageError(f"--space: {e}") from None
        if FLAGS.num_classes is not None and FLAGS.num_classes <= 0:
            raise UsageError(f"--num_classes={FLAGS.num_classes}: expected a positive integer")
        a = resolve_arch(FLAGS.arch, space)
        d = describe(space, a, FLAGS.num_classes)
        print(json.dumps(d) if FLAGS.json else _table(d))
        return 0
    except UsageError as e:
        print(f"elasticvit-info: error: {e}", file=sys.stderr)
        return 2


def run() -> None:
    """Console-script entry point (``elasticvit-info``; never loads TensorFlow)."""
    from elasticvit_tf import cli

    cli.run("elasticvit-info", main, define_flags, tensorflow=False)


if __name__ == "__main__":
    run()

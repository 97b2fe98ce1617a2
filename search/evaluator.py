"""Subnet fitness for the search: set the arch, recalibrate BN, top-1 on the ``search`` split.

``SubnetEvaluator`` follows docs/method.md#bn-recalibration (search variant; the evaluation
itself is ``extract.subnet_top1``): the supernet's active arch is set, every BatchNorm is
recalibrated on ``calibration_batches`` training batches (training augmentation), then top-1 is
measured on the held-out ``search`` split with BN in inference mode. No fine-tuning.

``EvalCache`` stores results per arch key as JSON in the tuner's project directory, so a
resumed or repeated search never evaluates an arch twice. Every tuner process writes its own
file (``eval_cache_<tuner_id>.json``, atomically) and reads all of them, so the chief and the
workers of a distributed search never write the same file.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any, Callable, Iterable, Optional

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.fileio import write_json_atomic

logger = logging.getLogger(__name__)

CACHE_PREFIX = "eval_cache_"


@dataclasses.dataclass(eq=False)
class SubnetEvaluator:
    """Top-1 of subnets of a trained supernet (docs/method.md#bn-recalibration, search variant).

    Args:
        net: an ``ElasticSupernet`` (``set_arch(arch, slot=0)``, ``net(x, training=False)``).
        calibration_data: ``tf.data.Dataset`` of ``(images, labels)`` training batches with
            training augmentation (the BN recalibration input), or a zero-argument callable
            returning a fresh one. A dataset is iterated afresh for every arch, so a shuffled
            one yields other batches for the n-th arch than for the first; a callable that
            rebuilds a seeded pipeline gives every arch the same ``calibration_batches``
            batches, so a score does not depend on the trials run before it in the process
            (a resumed search scores like an uninterrupted one).
        eval_data: ``tf.data.Dataset`` of ``(images, int labels)`` from the ``search`` split.
        calibration_batches: number of batches for BN recalibration (spec: 65 in search).
        eval_batches: number of ``eval_data`` batches to evaluate; None = the whole split.
        slot: the arch slot of the supernet used for evaluation.
    """

    net: Any
    calibration_data: Any
    eval_data: Any
    calibration_batches: int = 65
    eval_batches: Optional[int] = None
    slot: int = 0

    def __post_init__(self):
        n = self.calibration_batches
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"calibration_batches={n!r}: expected an integer >= 0")
        n = self.eval_batches
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"eval_batches={n!r}: expected None or an integer >= 1")

    def evaluate(self, arch: ArchConfig) -> float:
        """Sets ``arch``, recalibrates BN, returns top-1 (a fraction in [0, 1]); the supernet
        keeps one traced forward per slot, so trials do not re-trace
        (``extract.subnet_top1``)."""
        from elasticvit_tf.extract import subnet_top1

        data = self.eval_data
        if self.eval_batches is not None:
            data = data.take(self.eval_batches)
        return subnet_top1(
            self.net, arch, self.calibration_data, self.calibration_batches, data, slot=self.slot
        )

    __call__ = evaluate


class EvalCache:
    """Per-arch-key results cache (JSON files in the project directory).

    Args:
        directory: where the cache files live (the tuner's project directory).
        writer_id: this process's file suffix (the Keras Tuner tuner id).
        meta: what the results depend on (space hash, checkpoint, batch counts...); files
            written under other meta are ignored, so changing the evaluation never reuses
            stale numbers.
    """

    def __init__(self, directory: str, writer_id: str = "tuner0", meta: Optional[dict] = None):
        self.directory = directory
        self.writer_id = writer_id
        self.meta = json.loads(json.dumps(meta or {}))  # normalise tuples etc.
        self.path = os.path.join(directory, f"{CACHE_PREFIX}{writer_id}.json")
        self._own: dict[str, dict] = {}
        self._all: dict[str, dict] = {}
        os.makedirs(directory, exist_ok=True)
        self.reload()

    def reload(self) -> None:
        for path in sorted(glob.glob(os.path.join(self.directory, f"{CACHE_PREFIX}*.json"))):
            try:
                with open(path) as f:
                    blob = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                logger.warning("ignoring unreadable eval cache %s: %s", path, e)
                continue
            if blob.get("meta") != self.meta:
                logger.warning("ignoring eval cache %s: written for other settings", path)
                continue
            results = blob.get("results", {})
            self._all.update(results)
            if path == self.path:
                self._own.update(results)

    def get(self, key: str) -> Optional[dict]:
        return self._all.get(key)

    def put(self, key: str, result: dict) -> None:
        self._own[key] = dict(result)
        self._all[key] = dict(result)
        write_json_atomic(
            self.path, {"meta": self.meta, "results": self._own}, indent=1, sort_keys=True
        )

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: str) -> bool:
        return key in self._all


def arch_fn(obj: Any, method: str, what: str, result: str) -> Callable[[ArchConfig], float]:
    """``obj.<method>`` when ``obj`` has it, else ``obj`` itself when callable (``arch ->
    result``); ValueError naming ``what`` otherwise."""
    if hasattr(obj, method):
        return getattr(obj, method)
    if callable(obj):
        return obj
    raise ValueError(
        f"{what}: expected an object with {method}(arch) -> {result} or a callable, got "
        f"{type(obj).__name__}"
    )


def as_evaluate_fn(evaluator) -> Callable[[ArchConfig], float]:
    """An evaluator object (``.evaluate``) or a plain callable ``arch -> top1``."""
    return arch_fn(evaluator, "evaluate", "evaluator", "top1")


def archs_in(obj: Any) -> Iterable[ArchConfig]:
    """Every arch found in a JSON-like structure (e.g. a sampler state's memory banks).

    Dicts with ``resolution``/``stem``/``stages`` are archs; anything else is walked. Order is
    preserved; entries that fail to parse are skipped.
    """
    if isinstance(obj, dict):
        if {"resolution", "stem", "stages"} <= set(obj):
            try:
                yield ArchConfig.from_dict({k: obj[k] for k in ("resolution", "stem", "stages")})
            except ValueError:
                pass
            return
        for v in obj.values():
            yield from archs_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from archs_in(v)

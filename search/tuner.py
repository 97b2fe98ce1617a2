"""``SupernetTuner``: a Keras Tuner ``BaseTuner`` whose trials evaluate supernet subnets.

No model is built or trained per trial: ``run_trial`` turns the trial's values into an
``ArchConfig``, asks the evaluator for its top-1 (set arch, recalibrate BN, evaluate on the
``search`` split; any ``arch -> top1`` callable works, which is how tests inject a fake one) and
returns ``{"top1", "latency_ms", "mflops"}``; the oracle's objective is ``Objective("top1",
"max")``. Results are cached per arch key in the project directory (``EvalCache``).

Distributed search uses Keras Tuner's own mechanism: ``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``; the process whose tuner id contains
``chief`` serves the oracle over gRPC, the others evaluate.
"""

from __future__ import annotations

import math
import time
from typing import Optional

from keras_tuner.engine import base_tuner

from elasticvit_tf import cli
from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.flops import count_flops
from elasticvit_tf.search import hyperparameters as hp_lib
from elasticvit_tf.search.evaluator import EvalCache, as_evaluate_fn
from elasticvit_tf.search.oracle import _predict_fn
from elasticvit_tf.space import SearchSpace


class SupernetTuner(base_tuner.BaseTuner):
    """Runs oracle trials as subnet evaluations.

    Args:
        oracle: a ``ConstrainedEvolutionOracle`` or ``ConstrainedRandomOracle``.
        space: the search space (the same as the oracle's).
        evaluator: ``SubnetEvaluator`` or any callable ``arch -> top1``.
        predictor: latency predictor reported as ``latency_ms`` (``predict(arch) -> ms``);
            None reports NaN.
        cache_meta: what evaluation results depend on (checkpoint, batch counts...); cache
            files written under other meta are ignored.
        directory, project_name, overwrite: as in ``keras_tuner.BaseTuner`` (re-running with
            the same directory and project name resumes the search).
        idle_sleep_s: first back-off while the oracle answers ``IDLE`` (doubles up to 2 s).
    """

    def __init__(
        self,
        oracle,
        space: SearchSpace,
        evaluator,
        predictor=None,
        cache_meta: Optional[dict] = None,
        directory: Optional[str] = None,
        project_name: Optional[str] = None,
        overwrite: bool = False,
        idle_sleep_s: float = 0.05,
    ):
        self.space = space
        self.evaluate_fn = as_evaluate_fn(evaluator)
        self.predictor = predictor
        self._predict = _predict_fn(predictor)
        self.idle_sleep_s = float(idle_sleep_s)
        self._idle = 0
        self.evaluations = 0  # arch evaluations actually run by this process (cache misses)
        super().__init__(
            oracle=oracle,
            hypermodel=None,
            directory=directory,
            project_name=project_name,
            overwrite=overwrite,
        )
        meta = {"space_hash": space.fingerprint()}
        meta.update(cache_meta or {})
        self.cache = EvalCache(self.project_dir, self.tuner_id, meta=meta)

    # ------------------------------------------------------------------------------ trials
    def run_trial(self, trial, *args, **kwargs):
        arch = hp_lib.values_to_arch(self.space, trial.hyperparameters.values)
        key = arch.key()
        cached = self.cache.get(key)
        if cached is None:
            top1 = float(self.evaluate_fn(arch))
            self.evaluations += 1
            self.cache.put(key, {"top1": top1})
        else:
            top1 = float(cached["top1"])
        latency = float(self._predict(arch)) if self._predict is not None else math.nan
        return {"top1": top1, "latency_ms": latency, "mflops": float(count_flops(self.space, arch))}

    def pre_create_trial(self):
        if cli.stop_requested():  # SIGTERM: the last trial is saved; a re-run resumes here
            raise cli.Terminated(
                f"search stopped between trials; its state is in {self.project_dir}: run the "
                "same command again to resume"
            )
        # BaseTuner.search re-asks immediately after an IDLE answer; back off instead of
        # spinning (each ask is a gRPC call to the chief in distributed mode).
        if self._idle:
            time.sleep(min(self.idle_sleep_s * 2 ** (self._idle - 1), 2.0))
        self._idle += 1

    def on_trial_begin(self, trial):
        self._idle = 0
        super().on_trial_begin(trial)

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        write_json_atomic(self._get_tuner_fname(), self.get_state(), indent=None)

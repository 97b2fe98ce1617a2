"""Training callbacks: arch sampling, step counting, TensorBoard scalars, periodic evaluation
of the min/max subnets and checkpointing.

Callbacks run in list order at every batch end; ``train_lib`` uses
``[StepCounter, SamplerCallback, ScalarLogger, EvalCallback, CheckpointCallback]`` so that the
banks are updated before a checkpoint captures them and evaluations are logged at the step
they describe.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from elasticvit_tf import cli
from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.model_dir import ema_source_variables


@dataclasses.dataclass
class RunState:
    """Host-side progress shared by the callbacks.

    Attributes:
        step: optimizer steps done (= batches consumed from the start of training).
        steps_per_epoch: steps in one epoch.
        global_batch_size: images per step over all replicas.
        is_chief: whether this worker writes logs and the real checkpoints.
        rescore_batches: training batches consumed by ``BankScorer`` so far.
    """

    step: int = 0
    steps_per_epoch: int = 1
    global_batch_size: int = 1
    is_chief: bool = True
    rescore_batches: int = 0  # batches consumed by the bank refresh (saved with the data state)
    first_step_seconds: Optional[float] = None  # includes tracing the train step
    steady_seconds: float = 0.0  # time in steps after the first one of this process
    steady_steps: int = 0

    def steady_steps_per_second(self) -> Optional[float]:
        return self.steady_steps / self.steady_seconds if self.steady_seconds > 0 else None

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch


class StepCounter(keras.callbacks.Callback):
    """Advances ``RunState.step`` after every batch (first callback in the list)."""

    def __init__(self, state: RunState):
        super().__init__()
        self.state = state

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.state.step += 1
        dt = time.perf_counter() - self._t
        if self.state.first_step_seconds is None:
            self.state.first_step_seconds = dt
        else:
            self.state.steady_seconds += dt
            self.state.steady_steps += 1


class BankScorer:
    """Bank-refresh scores (docs/method.md#performance-aware-sampling): -CE of each arch on one
    training batch, a no-grad forward in train mode as the training step's own ``ce_slot``
    scores (BN batch statistics), averaged over all replicas so that every worker's sampler
    receives the same scores.

    Args:
        net: the supernet (slot 0 is used and left holding the last scored arch: the caller
            writes the step's archs afterwards).
        strategy: the ``tf.distribute`` strategy the supernet lives under.
        batches: callable ``skip -> iterator`` of distributed training batches, ``skip``
            batches in (the refresh's own pipeline, the same on every worker).
        state: ``RunState``; ``rescore_batches`` counts the batches taken (a resumed run
            continues the pipeline where it stopped).
    """

    def __init__(self, net, strategy, batches: Callable, state: RunState):
        self.net = net
        self.strategy = strategy
        self.batches = batches
        self.state = state
        self._it = None

        @tf.function(reduce_retracing=True)
        def _ce(x, y):
            logits = tf.cast(self.net(x, training=True, slot=0), tf.float32)
            y = tf.cast(tf.reshape(y, [-1]), tf.int32)
            return tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )

        self._ce = _ce

    def __call__(self, archs) -> list[float]:
        if self._it is None:
            self._it = iter(self.batches(self.state.rescore_batches))
        x, y = next(self._it)[:2]
        self.state.rescore_batches += 1
        scores = []
        for arch in archs:
            self.net.set_arch(arch, 0)
            ce = self.strategy.reduce(
                tf.distribute.ReduceOp.MEAN, self.strategy.run(self._ce, (x, y)), axis=None
            )
            scores.append(-float(ce))
        return scores


class SamplerCallback(keras.callbacks.Callback):
    """Samples the step's subnets on the host and writes them into the supernet's arch slots.

    ``on_train_batch_begin``: ``sampler.sample_step()`` then ``net.set_archs(archs)`` (every
    replica reads the same arch variables). ``on_train_batch_end``: the per-batch
    ``ce_slot{i}`` from the train step become scores ``-CE`` for ``sampler.update_scores``
    (subnets drawn from a bank and the distilled min subnet are not re-scored,
    docs/method.md#performance-aware-sampling). ``on_epoch_end``: ``sampler.end_epoch()``.

    Bank refresh, as the official loop: after ``sample_step``, the archs the sampler names in
    ``archs_to_rescore(batch in epoch, steps_per_epoch)`` (every bank at an epoch's first batch,
    the step level's bank at the three quarter-epoch points) are re-scored by ``scorer`` and
    fed back with ``update_scores`` before the step's archs are written.

    Args:
        sampler: a ``sampling.samplers.Sampler``.
        net: the supernet.
        trainer: the ``SupernetTrainer`` (its role layout is checked every step).
        arch_log: optional path of a JSON-lines file receiving ``{step, level, archs}``.
        state: ``RunState`` (step numbers for the arch log and the refresh schedule).
        scorer: ``archs -> scores`` for the bank refresh (a ``BankScorer``); None: no refresh.
    """

    def __init__(
        self,
        sampler,
        net,
        trainer=None,
        arch_log: Optional[str] = None,
        state=None,
        scorer: Optional[Callable] = None,
    ):
        super().__init__()
        self.sampler = sampler
        self.net = net
        self.trainer = trainer
        self.arch_log = arch_log
        self.state = state
        self.scorer = scorer
        self.current = None
        self.refreshed = 0  # archs re-scored by this process
        self._roles = sampler.roles
        if trainer is not None:
            trainer.set_roles(self._roles, sampler.distillation)

    def on_train_batch_begin(self, batch, logs=None):
        sample = self.sampler.sample_step()
        if sample.roles != self._roles:
            raise ValueError(
                f"sampler roles changed from {self._roles} to {sample.roles}; the train step "
                "is traced for a fixed role layout"
            )
        if self.scorer is not None and self.state is not None:
            spe = self.state.steps_per_epoch
            archs = self.sampler.archs_to_rescore(self.state.step % spe, spe)
            if archs:
                self.sampler.update_scores(list(zip(archs, self.scorer(archs))))
                self.refreshed += len(archs)
        self.net.set_archs(sample.archs)
        self.current = sample
        if self.arch_log:
            step = self.state.step if self.state is not None else None
            with open(self.arch_log, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "level": sample.level,
                            "archs": [a.key() for a in sample.archs],
                        }
                    )
                    + "\n"
                )

    def on_train_batch_end(self, batch, logs=None):
        if self.current is None or not logs:
            return
        pairs = []
        for i, (arch, role, from_bank) in enumerate(
            zip(self.current.archs, self.current.roles, self.current.from_bank)
        ):
            key = f"ce_slot{i}"
            if role == "min" or from_bank or key not in logs:
                continue
            pairs.append((arch, -float(logs[key])))
        if pairs:
            self.sampler.update_scores(pairs)

    def on_epoch_end(self, epoch, logs=None):
        # Keras also ends an "epoch" after a partial fit (resume, steps not a multiple of the
        # epoch length): only real epoch boundaries count.
        if self.state is None or self.state.step % self.state.steps_per_epoch == 0:
            self.sampler.end_epoch()


class ScalarLogger(keras.callbacks.Callback):
    """TensorBoard scalars every ``every`` steps: per-slot losses/CE, total loss, LR, level,
    bank sizes, gradient cosines and throughput (images/s)."""

    def __init__(self, logdir: str, state: RunState, sampler_cb: SamplerCallback, every: int = 10):
        super().__init__()
        self.logdir = logdir
        self.state = state
        self.sampler_cb = sampler_cb
        self.every = max(int(every), 1)
        self.writer = tf.summary.create_file_writer(logdir) if state.is_chief else None
        self._t0 = None
        self._s0 = 0

    def on_train_begin(self, logs=None):
        self._t0, self._s0 = time.perf_counter(), self.state.step

    def on_train_batch_end(self, batch, logs=None):
        if self.writer is None or self.state.step % self.every:
            return
        now = time.perf_counter()
        steps = self.state.step - self._s0
        scalars = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        if steps > 0 and now > self._t0:
            scalars["throughput_images_per_s"] = (
                steps * self.state.global_batch_size / (now - self._t0)
            )
        sample = self.sampler_cb.current
        if sample is not None and sample.level is not None:
            scalars["level_mflops"] = float(sample.level)
        bank_sizes = getattr(self.sampler_cb.sampler, "bank_sizes", None)
        if callable(bank_sizes):
            for level, size in dict(bank_sizes()).items():
                scalars[f"bank_size/{level}"] = float(size)
        with self.writer.as_default(step=self.state.step):
            for k, v in scalars.items():
                tf.summary.scalar(k, v)
        self.writer.flush()
        self._t0, self._s0 = now, self.state.step


class EmaEvaluator:
    """Top-1 of named subnets with the EMA weights after BN recalibration
    (docs/method.md#bn-recalibration; each subnet is ``extract.subnet_top1``).

    The live weights (and BN statistics) are backed up first and restored afterwards, so
    evaluating never changes training.

    Args:
        net: the supernet.
        ema: ``EmaWeights`` or None (evaluate the live weights).
        calib_dataset: callable returning a fresh iterable of training batches.
        eval_dataset: callable returning a fresh iterable of ``(images, labels)``.
        calib_batches: BN recalibration batches.
    """

    def __init__(self, net, ema, calib_dataset: Callable, eval_dataset: Callable, calib_batches):
        self.net = net
        self.ema = ema
        self.calib_dataset = calib_dataset
        self.eval_dataset = eval_dataset
        self.calib_batches = int(calib_batches)

    def __call__(self, archs: dict) -> dict:
        from elasticvit_tf.extract import subnet_top1

        sources = ema_source_variables(self.net)
        backup = [np.array(v.numpy()) for v in sources]
        slot0 = self.net.get_arch(0)
        out = {}
        try:
            if self.ema is not None:
                self.ema.copy_to_model()
            for name, arch in archs.items():
                out[name] = subnet_top1(
                    self.net, arch, self.calib_dataset(), self.calib_batches, self.eval_dataset()
                )
        finally:
            for v, b in zip(sources, backup):
                v.assign(b)
            self.net.set_arch(slot0, 0)
        return out


class EvalCallback(keras.callbacks.Callback):
    """Evaluates the min and max subnets every ``every`` steps and at the end of training;
    logs ``eval/<name>_top1`` to TensorBoard and appends records to ``eval.json``.

    Args:
        evaluator: an ``EmaEvaluator`` (names -> archs in, names -> top-1 out).
        archs: name -> arch (``{"min": space.min_arch(), "max": space.max_arch()}``).
        state: ``RunState``.
        every: steps between evaluations (0: only at the end).
        logdir: TensorBoard directory for eval scalars.
        eval_json: path of ``eval.json`` (records kept across resumes).
    """

    def __init__(self, evaluator, archs, state, every, logdir=None, eval_json=None, split="test"):
        super().__init__()
        self.evaluator = evaluator
        self.archs = dict(archs)
        self.state = state
        self.every = int(every)
        self.split = split
        self.eval_json = eval_json
        self.writer = tf.summary.create_file_writer(logdir) if logdir and state.is_chief else None
        self.last: Optional[dict] = None
        self._last_step = -1

    def evaluate(self) -> dict:
        t0 = time.perf_counter()
        res = self.evaluator(self.archs)
        record = {
            "step": self.state.step,
            "epoch": self.state.step / self.state.steps_per_epoch,
            "split": self.split,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        record.update({f"{k}_top1": v for k, v in res.items()})
        self.last, self._last_step = record, self.state.step
        if self.state.is_chief:
            if self.writer is not None:
                with self.writer.as_default(step=self.state.step):
                    for k, v in res.items():
                        tf.summary.scalar(f"eval/{k}_top1", v)
                self.writer.flush()
            if self.eval_json:
                _append_eval(self.eval_json, record)
            print(
                "eval step %d: %s"
                % (self.state.step, ", ".join(f"{k} top1 {v:.4f}" for k, v in res.items())),
                flush=True,
            )
        return record

    def on_train_batch_end(self, batch, logs=None):
        if self.every > 0 and self.state.step % self.every == 0:
            self.evaluate()


def _append_eval(path: str, record: dict) -> None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        data = {"records": []}
    data["records"] = [r for r in data.get("records", []) if r.get("step") != record["step"]]
    data["records"].append(record)
    data["latest"] = record
    write_json_atomic(path, data, sort_keys=True, fsync=True)


class CheckpointCallback(keras.callbacks.Callback):
    """Saves the training checkpoint every ``every`` steps and at the end of training.

    Before saving it writes the host-side state into the checkpoint's variables: the step, the
    sampler state (JSON) and the data position (JSON: batches consumed per input pipeline).

    Args:
        manager: ``tf.train.CheckpointManager`` over the ``model_dir.make_checkpoint`` layout.
        step_var, sampler_var, data_var: the checkpoint's ``step``/``sampler``/``data`` entries.
        sampler: the sampler whose state is saved.
        state: ``RunState``.
        every: steps between saves (0: only at the end).
        after_save: optional hook (e.g. removing a non-chief worker's temporary directory).
    """

    def __init__(
        self,
        manager,
        step_var,
        sampler_var,
        data_var,
        sampler,
        state: RunState,
        every: int,
        after_save: Optional[Callable[[], Any]] = None,
    ):
        super().__init__()
        self.manager = manager
        self.step_var = step_var
        self.sampler_var = sampler_var
        self.data_var = data_var
        self.sampler = sampler
        self.state = state
        self.every = int(every)
        self.after_save = after_save
        self.last_saved = -1

    def save(self) -> Optional[str]:
        if self.last_saved == self.state.step:
            return None
        self.step_var.assign(self.state.step)
        self.sampler_var.assign(json.dumps(self.sampler.get_state()))
        self.data_var.assign(
            json.dumps(
                {
                    "batches_consumed": self.state.step,
                    "rescore_batches_consumed": self.state.rescore_batches,
                }
            )
        )
        path = self.manager.save(checkpoint_number=self.state.step)
        self.last_saved = self.state.step
        if self.after_save is not None:
            self.after_save()
        return path

    def on_train_batch_end(self, batch, logs=None):
        if cli.stop_requested():  # SIGTERM: save this step, stop fit (docs/design.md)
            self.save()
            self.model.stop_training = True
        elif self.every > 0 and self.state.step % self.every == 0:
            self.save()

"""Flag-free supernet training: ``TrainConfig`` + ``train(config) -> dict``.

``train`` writes the model_dir of docs/formats.md#model_dir (``config.json``, ``checkpoints/``,
``tensorboard/``, ``eval.json``) and resumes exactly from the last complete checkpoint when the
model_dir already holds one of the same run: step, optimizer, live and EMA weights, sampler
(RNG, level, banks, schedule) and data position are restored; with ``deterministic=True`` the
resumed run samples the same archs and reaches the same weights as an uninterrupted one.

``train(config, time_box=TimeBox(seconds))`` fits the run into a wall-clock budget instead: a
short probe measures the step rate, then the run resumes with the steps that fit. A run
without a time box never looks at the clock to decide what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Optional, Sequence

from elasticvit_tf import cli
from elasticvit_tf import model_dir as md

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
# Config entries that must match to resume a model_dir (others, e.g. epochs, may change).
_RESUME_KEYS = ("space", "space_fingerprint", "num_classes", "data", "num_slots")
_RESUME_TRAIN_KEYS = (
    "sampler",
    "sampler_kwargs",
    "batch_size",
    "seed",
    "teacher",
    "mixed_precision",
)
# --mixed_precision -> the blocks' Keras dtype policy (docs/method.md#mixed-precision)
MIXED_PRECISION = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs (``elasticvit-train`` flags map 1:1 onto it).

    Learning rates (``lr``, ``warmup_lr``, ``min_lr``) are given for a global batch of
    ``lr_reference_batch`` images and scaled linearly to ``batch_size``
    (docs/method.md#training-recipe; set ``lr_reference_batch=0`` to use them as is).
    """

    model_dir: str = ""
    space: str = "demo"
    # data
    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    tfds_data_dir: Optional[str] = None  # tfds:NAME sources
    manual_dir: Optional[str] = None  # tfds manual_dir (ImageNet-2012 tars)
    image_size: Optional[int] = None  # default: the space's largest resolution
    augment: str = "auto"
    split_seed: int = 0
    search_size: int = 5000
    val_fraction: float = 0.0
    max_train_examples: Optional[int] = None
    # schedule
    epochs: int = 10
    steps: Optional[int] = None  # total steps; overrides epochs
    steps_per_epoch: Optional[int] = None  # default: train examples // batch_size
    batch_size: int = 128  # global
    # sampler
    sampler: str = "elasticvit"
    sampler_kwargs: dict = dataclasses.field(default_factory=dict)
    num_subnets: int = 4
    # optimisation (docs/method.md#training-recipe)
    lr: float = 5e-4
    warmup_lr: float = 1e-6
    min_lr: float = 5e-6
    lr_reference_batch: int = 512
    warmup_steps: int = 0
    cooldown_steps: int = 0
    weight_decay: float = 0.05
    agc_clip: float = 0.1
    ema_decay: float = 0.99985
    ema_warmup: bool = False
    # True: variables no subnet of the step used get no AdamW update (official code under
    # torch >= 2); default: every super-weight is updated every step (docs/method.md#training-recipe)
    skip_unused_updates: bool = False
    # losses
    teacher: str = ""
    teacher_temperature: float = 0.2
    label_smoothing: float = 0.1
    # runtime
    # float32, bfloat16 or float16 (with dynamic loss scaling): the blocks compute in it, the
    # variables, optimizer state, norms' statistics, softmax and losses stay float32
    mixed_precision: str = "float32"
    strategy: str = "auto"
    cpu_devices: int = 0  # >1: split the CPU into that many logical devices (tests)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: evaluate at the end only
    eval_split: str = "test"
    eval_batches: int = 0  # 0: the whole split
    calib_batches: int = 20
    log_every: int = 10
    deterministic: bool = False
    seed: int = 0
    grad_cosine: bool = False
    verbose: int = 1
    log_archs: bool = False  # write arch_log.jsonl (tests, ablations)
    # "auto": Grappler off on CPU-only hosts (process-wide). Measured on 2 shared CPU cores:
    # first train step of the tiny space 144 s -> 100 s, steady step time unchanged.
    graph_optimizations: str = "auto"

    @classmethod
    def demo(cls, model_dir: str = "", **overrides) -> "TrainConfig":
        """The embedded demo recipe: ``demo`` space on Fashion-MNIST for a ~8 minute budget on 2
        CPU cores (the caller time-boxes ``steps``).

        The official ElasticViT sampler (3 performance-aware subnets of one FLOPs level + that
        level's min subnet, the min distilled from the mean of the other three), a high AdamW LR
        with a short warm-up, an EMA with warm-up so that a short run's EMA tracks the live
        weights, and no augmentation: a run this short (about 1.5 epochs) does not overfit,
        and measured on 400 steps (same seed, elasticvit sampler) augmentation cost 5 points
        (light: min/max 76.8/76.3 %, none: 81.8/85.8 % test top-1).
        """
        base = dict(
            model_dir=model_dir,
            space="demo",
            dataset="fashion_mnist",
            image_size=28,
            epochs=3,
            batch_size=128,
            augment="none",
            sampler="elasticvit",
            num_subnets=4,
            lr=4e-3,
            lr_reference_batch=128,
            warmup_lr=4e-5,
            min_lr=4e-5,
            warmup_steps=100,
            weight_decay=0.05,
            ema_decay=0.998,
            ema_warmup=True,
            label_smoothing=0.1,
            checkpoint_every=200,
            eval_every=0,
            calib_batches=20,
            search_size=5000,
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {unknown}; expected {sorted(known)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class TimeBox:
    """A wall-clock budget for ``train``: the step count is planned to fit ``seconds``.

    A probe of ``probe_steps`` steps runs first, inside the LR warm-up (whose values do not
    depend on the total, so the probe is the first part of the final schedule); it measures
    the steady step rate and the fixed costs (graph tracing, checkpoint, evaluation), then the
    run resumes from the probe's checkpoint with the steps that fit, and re-plans them every
    ``replan_every`` steps from the rate it measures (``TimeBoxReplan``). The probe is skipped (and
    the config's steps run as they are) when the warm-up or the run is too short for one.

    Attributes:
        seconds: the budget of the whole call (probe, training and final evaluation).
        probe_steps: the probe's length (capped by the warm-up and a quarter of the steps).
        rate_margin: share of the probe's steady step rate the plan uses: the level walk
            reaches larger subnets later and checkpoints recur (measured: 2.4 % over a
            9-minute box without this margin).
        final_eval_seconds: time kept for the final evaluation of the min and max subnets.
        replan_every: steps between re-plans during the run (``TimeBoxReplan``): the steps
            that fit are recomputed from the rate just measured.
    """

    seconds: float
    probe_steps: int = 40
    rate_margin: float = 0.94
    final_eval_seconds: float = 30.0
    replan_every: int = 50

    def __post_init__(self):
        if not self.seconds > 0:
            raise ValueError(f"time box seconds={self.seconds!r}; expected > 0")
        if isinstance(self.probe_steps, bool) or self.probe_steps < 0:
            raise ValueError(f"probe_steps={self.probe_steps!r}; expected >= 0")
        if not 0 < self.rate_margin <= 1:
            raise ValueError(f"rate_margin={self.rate_margin!r}; expected in (0, 1]")


# ------------------------------------------------------------------------------ validation
def validate_config(config: TrainConfig) -> None:
    """Cheap checks before TensorFlow starts (``ValueError`` naming the field)."""
    from elasticvit_tf.sampling.registry import SAMPLER_NAMES
    from elasticvit_tf.space import get_space

    if not config.model_dir:
        raise ValueError("model_dir is required (the output directory)")
    get_space(config.space)
    if config.sampler not in SAMPLER_NAMES:
        raise ValueError(
            f"unknown sampler {config.sampler!r}; expected one of {list(SAMPLER_NAMES)}"
        )
    if config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision={config.mixed_precision!r}; expected one of {list(MIXED_PRECISION)}"
        )
    if config.strategy not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {config.strategy!r}; expected one of {list(STRATEGIES)}"
        )
    for name in ("batch_size", "num_subnets"):
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}; expected a positive integer")
    if config.steps is None and config.epochs < 1:
        raise ValueError(f"epochs={config.epochs}; expected >= 1 (or set steps)")
    if config.steps is not None and config.steps < 1:
        raise ValueError(f"steps={config.steps}; expected >= 1")
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={config.steps_per_epoch}; expected >= 1")
    if config.eval_split not in ("test", "val", "search"):
        raise ValueError(f"eval_split={config.eval_split!r}; expected 'test', 'val' or 'search'")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={config.label_smoothing}; expected in [0, 1)")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay={config.ema_decay}; expected in [0, 1)")
    if config.graph_optimizations not in ("auto", "on", "off"):
        raise ValueError(
            f"graph_optimizations={config.graph_optimizations!r}; expected auto, on or off"
        )
    if config.teacher_temperature <= 0:
        raise ValueError(f"teacher_temperature={config.teacher_temperature}; expected > 0")


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None


def _num_workers(tf_config: dict) -> int:
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name: str, cpu_devices: int = 0):
    """``tf.distribute`` strategy by name (``auto`` picks multi_worker when TF_CONFIG names
    several workers, mirrored with several GPUs or logical CPUs, else one_device)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {list(STRATEGIES)}")
    tf_config = _tf_config()
    if name == "multi_worker" and _num_workers(tf_config) < 1:
        raise ValueError("strategy 'multi_worker' needs TF_CONFIG naming the cluster's workers")
    if cpu_devices and cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * int(cpu_devices)
            )
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) != cpu_devices:
                raise ValueError(
                    f"cpu_devices={cpu_devices}: TensorFlow was already initialised with "
                    f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s)"
                ) from None
    if name == "auto":
        if _num_workers(tf_config) > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1 or (cpu_devices or 0) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def _is_chief(strategy) -> tuple[bool, Optional[str], int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, None, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, task_type, task_id


# ------------------------------------------------------------------------------ schedule
def _schedule(config: TrainConfig, train_size: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)`` of ``config`` on a train split of ``train_size``."""
    spe = config.steps_per_epoch or train_size // config.batch_size
    if spe < 1:
        raise ValueError(
            f"the train split has {train_size} examples: fewer than one batch of "
            f"{config.batch_size}"
        )
    return spe, config.steps or config.epochs * spe


def _data_config(config: TrainConfig, space):
    from elasticvit_tf import data as data_lib

    return data_lib.DataConfig(
        dataset=config.dataset,
        data_dir=config.data_dir,
        tfds_data_dir=config.tfds_data_dir,
        manual_dir=config.manual_dir,
        image_size=int(config.image_size or space.max_resolution),
        augment=config.augment,
        split_seed=config.split_seed,
        search_size=config.search_size,
        val_fraction=config.val_fraction,
        max_train_examples=config.max_train_examples,
    )


def total_steps(config: TrainConfig) -> int:
    """The optimizer steps ``train(config)`` runs (``steps``, else ``epochs`` of the split)."""
    from elasticvit_tf import data as data_lib
    from elasticvit_tf.space import get_space

    if config.steps:
        return int(config.steps)
    data_cfg, _ = data_lib.resolve_data_config(
        _data_config(config, get_space(config.space)), fallback=False
    )
    return _schedule(config, data_lib.get_info(data_cfg).split_sizes["train"])[1]


# ------------------------------------------------------------------------------ model_dir
def _check_existing(model_dir: str, new_config: dict, space) -> bool:
    """True when model_dir holds a resumable run of this config; ValueError when it holds
    something else (nothing is written in that case)."""
    has_config = os.path.isfile(md.config_path(model_dir))
    has_ckpt = bool(md.checkpoint_paths(model_dir))
    if not has_config:
        if has_ckpt:
            raise ValueError(
                f"{model_dir} holds checkpoints but no config.json; refusing to reuse it "
                "(pick a new --model_dir)"
            )
        return False
    old = md.read_config(model_dir)
    md.check_space(old, space, model_dir)
    diffs = [k for k in _RESUME_KEYS if old.get(k) != new_config.get(k)]
    old_train, new_train = old.get("train", {}), new_config["train"]
    diffs += [f"train.{k}" for k in _RESUME_TRAIN_KEYS if old_train.get(k) != new_train.get(k)]
    if diffs:
        raise ValueError(
            f"model_dir {model_dir} holds a run with different settings ({', '.join(diffs)}); "
            "resume with the same command or pick a new --model_dir"
        )
    return has_ckpt


# ------------------------------------------------------------------------------ train
def train(
    config: TrainConfig,
    extra_callbacks: Sequence = (),
    time_box: Optional[TimeBox] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains (or resumes) a supernet; returns the final metrics.

    Args:
        config: the run.
        extra_callbacks: Keras callbacks appended after the built-in ones (they see
            ``self.model``, the ``SupernetTrainer``, whose ``net`` is the supernet).
        time_box: fit the run into a wall-clock budget (``TimeBox``): ``config``'s steps
            become an upper bound. None: run ``config`` as it is.
        log: where the time box reports its plan.

    Returns:
        dict with ``step``, ``epochs``, ``min_top1``, ``max_top1`` (EMA weights, BN
        recalibrated, on ``eval_split``), ``train_seconds``, ``images_per_second``,
        ``resumed_from_step``, ``trace_count`` and ``model_dir``; with a time box also
        ``target_steps`` (the config's), ``planned_steps``, ``time_box_s`` (None when no
        probe ran), ``probe_steps``, ``probe_steps_per_s``, ``probe_overhead_s``,
        ``time_boxed`` (steps were cut) and ``wall_seconds``.
    """
    if time_box is None:
        return _train(config, extra_callbacks)
    return _train_time_boxed(config, time_box, extra_callbacks, log)


def _train_time_boxed(config, box: TimeBox, extra_callbacks, log) -> dict:
    validate_config(config)
    target = total_steps(config)
    probe = min(int(box.probe_steps), max(0, int(config.warmup_steps)), target // 4)
    probe = probe if probe >= 4 else 0
    t0 = time.monotonic()
    steps, rate, overhead = target, None, None
    if probe > 0:
        log(f"[train] probe: {probe} steps (inside the LR warm-up) to measure the step rate")
        pr = _train(_probe_config(config, probe), extra_callbacks)
        probe_s = time.monotonic() - t0
        done = pr["step"] - pr["resumed_from_step"]
        rate = steady_step_rate(config.model_dir, config.batch_size)
        if rate is None and pr["train_seconds"] > 0 and done > 0:
            rate = done / pr["train_seconds"]
        if rate:
            # Fixed costs seen by the probe (tracing, checkpoint, evaluation) recur once.
            overhead = max(0.0, probe_s - done / rate)
            left = box.seconds - probe_s - overhead - box.final_eval_seconds
            planning_rate = rate * box.rate_margin
            steps = max(pr["step"], min(target, pr["step"] + int(max(0.0, left) * planning_rate)))
        log(
            f"[train] probe: {rate or 0:.3f} steps/s steady, {overhead or 0:.0f}s fixed costs; "
            f"planned {steps}/{target} steps to fit {box.seconds / 60:.1f} min"
        )
    replan = None
    if rate:
        deadline = t0 + box.seconds - box.final_eval_seconds
        replan = TimeBoxReplan(deadline, steps, target, box.rate_margin, box.replan_every, log)
    callbacks = list(extra_callbacks) + ([replan] if replan else [])
    # With a re-plan the run is configured for the target (the upper bound); the callback sets
    # the schedule to the plan before the first step and stops the run at the plan.
    result = _train(dataclasses.replace(config, steps=target if replan else steps), callbacks)
    result.update(
        {
            "target_steps": target,
            "planned_steps": replan.planned if replan else steps,
            "initial_planned_steps": steps,
            "replans": replan.replans if replan else [],
            "time_box_s": box.seconds if probe > 0 else None,
            "probe_steps": probe,
            "probe_steps_per_s": rate,
            "probe_overhead_s": overhead,
            "time_boxed": steps < target,
            "wall_seconds": time.monotonic() - t0,
        }
    )
    return result


def _replan_callback_base():
    import keras

    return keras.callbacks.Callback


class TimeBoxReplan(_replan_callback_base()):
    """Re-plans a time-boxed run from the step rate measured while it trains.

    Every ``every`` steps (the first window, which holds the tracing, is skipped) the steps
    that still fit before ``deadline`` (``time.monotonic()``) at ``margin`` times the rate of
    the last window become the new total, capped by ``target``: the LR schedule's length is
    re-set in place (``WarmupCosine.replan``, no retrace) and the run stops at the new total.
    So a probe taken while the machine was busy does not cut the training short. Only the time
    box uses it; a plain ``train`` never looks at the clock.
    """

    def __init__(
        self, deadline: float, planned: int, target: int, margin: float, every: int, log=print
    ):
        super().__init__()
        self.deadline, self.target, self.margin = deadline, int(target), float(margin)
        self.every, self.log = max(1, int(every)), log
        self.planned = int(planned)
        self.replans = []
        self._mark = None

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self._mark = None
        schedule = self.model.optimizer._learning_rate
        if schedule.total_steps != self.planned:
            schedule.replan(self.planned)

    def on_train_batch_end(self, batch, logs=None):
        step, now = self._step(), time.monotonic()
        if self._mark is None:  # first step of this fit (tracing): start measuring after it
            self._mark = (step, now)
        elif step - self._mark[0] >= self.every:
            rate = (step - self._mark[0]) / max(now - self._mark[1], 1e-9)
            self._mark = (step, now)
            self._replan(step, rate, now)
        if step >= self.planned:
            self.model.stop_training = True

    def _replan(self, step, rate, now):
        schedule = self.model.optimizer._learning_rate
        fit = step + int(max(0.0, self.deadline - now) * rate * self.margin)
        floor = max(step, schedule.warmup_steps + schedule.cooldown_steps + 1)
        new = max(floor, min(self.target, fit))
        if abs(new - self.planned) <= max(2, 0.01 * self.planned):
            return
        self.log(
            f"[train] re-plan at step {step}: {rate:.3f} steps/s -> {new} steps "
            f"(was {self.planned})"
        )
        schedule.replan(new)
        self.replans.append({"step": step, "steps_per_s": rate, "planned_steps": new})
        self.planned = new


def _probe_config(config: TrainConfig, probe: int) -> TrainConfig:
    """The first ``probe`` steps of ``config``'s schedule as a run of their own.

    The schedule needs warm-up < total steps: the probe warms up over ``probe - 1`` steps
    towards a proportionally lower peak, i.e. the same LR values as the full warm-up.
    """
    w = probe - 1
    return dataclasses.replace(
        config,
        steps=probe,
        warmup_steps=w,
        cooldown_steps=0,
        lr=config.warmup_lr + (config.lr - config.warmup_lr) * w / max(1, config.warmup_steps),
        eval_batches=1,
        calib_batches=2,
    )


def steady_step_rate(model_dir: str, batch_size: int) -> Optional[float]:
    """Steps/s of a run: the median logged throughput after the first logging window (which
    holds the tracing); None before two windows were logged."""
    import numpy as np

    tput = md.read_training_curves(model_dir).get("throughput_images_per_s", [])
    vals = [v for _, v in tput[1:] if v > 0]
    return float(np.median(vals)) / batch_size if vals else None


def make_trainer(config: TrainConfig, net, learning_rate, teachers: Sequence = ()):
    """``(optimizer, SupernetTrainer)`` of ``config`` on ``net`` (compiled; call inside the
    strategy's scope): the train step ``train`` runs, also timed by
    benchmarks/supernet_step.py."""
    from elasticvit_tf.train import optim, recipe

    opt = optim.make_optimizer(net, learning_rate, weight_decay=config.weight_decay)
    if config.mixed_precision == "float16":  # dynamic loss scaling (the trainer scales)
        import keras

        opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(net.trainable_variables)
    trainer = recipe.SupernetTrainer(
        net,
        teachers=teachers,
        teacher_temperature=config.teacher_temperature,
        label_smoothing=config.label_smoothing,
        agc_clip=config.agc_clip,
        ema_decay=config.ema_decay,
        ema_warmup=config.ema_warmup,
        grad_cosine=config.grad_cosine,
        skip_unused_updates=config.skip_unused_updates,
    )
    trainer.compile(optimizer=opt, jit_compile=False)
    return opt, trainer


def _train(config: TrainConfig, extra_callbacks: Sequence = ()) -> dict:
    with contextlib.ExitStack() as held:  # the model_dir's TrainingLock, once taken
        return _train_holding(config, extra_callbacks, held)


def _train_holding(config: TrainConfig, extra_callbacks, held: contextlib.ExitStack) -> dict:
    validate_config(config)
    import tensorflow as tf

    strategy = make_strategy(config.strategy, config.cpu_devices)
    import keras

    from elasticvit_tf import data as data_lib
    from elasticvit_tf.sampling.registry import make_sampler
    from elasticvit_tf.space import get_space
    from elasticvit_tf.supernet import ElasticSupernet
    from elasticvit_tf.train import callbacks as cb
    from elasticvit_tf.train import optim, recipe

    space = get_space(config.space)
    n_rep = strategy.num_replicas_in_sync
    if config.batch_size % n_rep:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the {n_rep} replicas of "
            f"strategy {config.strategy!r}"
        )
    is_chief, task_type, task_id = _is_chief(strategy)
    num_workers = max(1, _num_workers(_tf_config())) if task_type else 1

    data_cfg, notices = data_lib.resolve_data_config(_data_config(config, space), fallback=False)
    # This run reads its data set once: every dataset below (training pipelines, calibration and
    # evaluation at each periodic evaluation) comes from this cache.
    data_cache = data_lib.DataCache(max_sources=1)
    info = data_lib.get_info(data_cfg, cache=data_cache)
    make_dataset = functools.partial(data_lib.make_dataset, data_cfg, cache=data_cache)
    for n in list(notices) + list(info.notices):
        print(f"data: {n}", flush=True)
    spe, total_steps = _schedule(config, info.split_sizes["train"])
    peak = optim.scale_lr(config.lr, config.batch_size, config.lr_reference_batch)
    run_config = {
        **md.space_config(space),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "data": data_cfg.to_dict(),
        "split_seed": data_cfg.split_seed,
        "split_sizes": dict(info.split_sizes),
        "num_slots": config.num_subnets,
        "input_channels": 3,
        "supernet_kwargs": {},
        "train": config.to_dict(),
        "steps_per_epoch": spe,
        "total_steps": total_steps,
        "global_batch_size": config.batch_size,
        "num_replicas": n_rep,
        "peak_lr": peak,
    }
    resume = _check_existing(config.model_dir, run_config, space)
    if is_chief:
        held.enter_context(md.TrainingLock(config.model_dir))
        md.remove_orphan_temp_dirs(config.model_dir)
    teachers = recipe.load_teachers(config.teacher, info.num_classes)
    sampler = make_sampler(
        config.sampler,
        space,
        config.seed,
        total_steps=total_steps,
        num_subnets=config.num_subnets,
        **config.sampler_kwargs,
    )

    keras.utils.set_random_seed(config.seed)
    graph_opt = config.graph_optimizations
    if graph_opt == "auto":
        graph_opt = "on" if tf.config.list_physical_devices("GPU") else "off"
    if graph_opt == "off":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if is_chief:
        md.write_config(config.model_dir, run_config)

    schedule = optim.WarmupCosine(
        peak,
        total_steps,
        warmup_steps=config.warmup_steps,
        warmup_lr=optim.scale_lr(config.warmup_lr, config.batch_size, config.lr_reference_batch),
        min_lr=optim.scale_lr(config.min_lr, config.batch_size, config.lr_reference_batch),
        cooldown_steps=config.cooldown_steps,
    )
    with strategy.scope():
        net = ElasticSupernet(
            space,
            info.num_classes,
            num_slots=config.num_subnets,
            dtype_policy=MIXED_PRECISION[config.mixed_precision],
        )
        opt, trainer = make_trainer(config, net, schedule, teachers)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    sampler_var = tf.Variable("", dtype=tf.string, trainable=False, name="sampler_state")
    data_var = tf.Variable("", dtype=tf.string, trainable=False, name="data_state")
    ckpt = md.make_checkpoint(net, trainer.ema, opt, step_var, sampler_var, data_var)

    state = cb.RunState(0, spe, config.batch_size, is_chief)
    if resume:
        path = md.restore_latest_intact(
            config.model_dir,
            lambda p: md.restore_checkpoint(ckpt, p).assert_existing_objects_matched(),
            log=lambda m: print(m, flush=True),
        )
        state.step = int(step_var.numpy())
        sampler.set_state(json.loads(sampler_var.numpy().decode()))
        data_state = json.loads(data_var.numpy().decode() or "{}")
        state.rescore_batches = int(data_state.get("rescore_batches_consumed", 0))
        print(f"resumed from {path} at step {state.step}", flush=True)
        if is_chief and config.log_archs:
            md.trim_arch_log(config.model_dir, state.step)
    resumed_from = state.step

    ckpt_dir = md.checkpoint_dir(config.model_dir)
    tmp_dir = None
    if not is_chief:
        tmp_dir = tempfile.mkdtemp(prefix=f"evit_worker{task_id}_")
        ckpt_dir = tmp_dir
    manager = md.checkpoint_manager(ckpt_dir, ckpt, max_to_keep=config.keep_checkpoints)

    def _cleanup():
        if tmp_dir:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            os.makedirs(tmp_dir, exist_ok=True)

    # ---------------------------------------------------------------- data
    per_pipeline = n_rep // num_workers

    def train_pipelines(seed, skip_steps):
        """The training split sharded over the input pipelines, from step ``skip_steps``."""

        def fn(ctx):
            ds = make_dataset(
                "train", config.batch_size, training=True, repeat=True, seed=seed, input_context=ctx
            )
            # NOTE: distribute_datasets_from_function hands each pipeline's consecutive
            # per-replica batches to its local replicas: one step = per_pipeline batches.
            return ds.skip(skip_steps * per_pipeline)

        return strategy.distribute_datasets_from_function(fn)

    def train_dataset(skip_steps):
        return train_pipelines(config.seed, skip_steps)

    eval_bs = min(256, max(32, config.batch_size))

    def calib_dataset():
        return make_dataset(
            "train", config.batch_size, training=True, repeat=True, seed=config.seed + 1
        )

    def eval_dataset():
        ds = make_dataset(config.eval_split, eval_bs, training=False)
        return ds.take(config.eval_batches) if config.eval_batches > 0 else ds

    # ---------------------------------------------------------------- callbacks
    tb = md.tensorboard_dir(config.model_dir)
    arch_log = md.arch_log_path(config.model_dir) if config.log_archs else None

    def rescore_batches(skip):
        # The bank refresh's own pipeline, sharded as the training data; BankScorer averages
        # the scores over all replicas, so every worker's sampler gets the same ones.
        return train_pipelines(config.seed + 2, skip)

    sampler_cb = cb.SamplerCallback(
        sampler,
        net,
        trainer,
        arch_log=arch_log if is_chief else None,
        state=state,
        scorer=cb.BankScorer(net, strategy, rescore_batches, state),
    )
    evaluator = cb.EmaEvaluator(net, trainer.ema, calib_dataset, eval_dataset, config.calib_batches)
    eval_cb = cb.EvalCallback(
        evaluator,
        {"min": space.min_arch(), "max": space.max_arch()},
        state,
        config.eval_every,
        logdir=os.path.join(tb, "eval"),
        eval_json=md.eval_path(config.model_dir),
        split=config.eval_split,
    )
    ckpt_cb = cb.CheckpointCallback(
        manager,
        step_var,
        sampler_var,
        data_var,
        sampler,
        state,
        config.checkpoint_every,
        after_save=_cleanup,
    )
    if resume:
        ckpt_cb.last_saved = state.step  # the restored checkpoint is this step's
    callbacks = [
        cb.StepCounter(state),
        sampler_cb,
        cb.ScalarLogger(os.path.join(tb, "train"), state, sampler_cb, config.log_every),
        eval_cb,
        ckpt_cb,
        *extra_callbacks,
    ]

    # ---------------------------------------------------------------- fit
    # Keras epochs are kept aligned with real epochs: a run resumed mid-epoch first finishes
    # that epoch, then runs whole epochs, then a final partial one if steps say so.
    # SIGTERM (pre-emption) stops at the next step end, after a checkpoint (CheckpointCallback).
    t0 = time.perf_counter()
    with cli.deferred_sigterm():
        while state.step < total_steps and not cli.stop_requested():
            epoch, in_epoch = divmod(state.step, spe)
            if in_epoch:
                n_epochs, steps = 1, min(spe - in_epoch, total_steps - state.step)
            elif total_steps - state.step >= spe:
                n_epochs, steps = (total_steps - state.step) // spe, spe
            else:
                n_epochs, steps = 1, total_steps - state.step
            trainer.fit(
                train_dataset(state.step),
                initial_epoch=epoch,
                epochs=epoch + n_epochs,
                steps_per_epoch=steps,
                callbacks=callbacks,
                verbose=config.verbose if is_chief else 0,
                shuffle=False,  # tf.data pipelines are shuffled by data.make_dataset
            )
            if trainer.stop_training:  # a callback ended the run (the time box's re-plan)
                break
    if cli.stop_requested():
        ckpt_cb.save()
        raise cli.Terminated(
            f"checkpoint of step {state.step} written to {ckpt_dir}; run the same command "
            "again to resume"
        )
    seconds = time.perf_counter() - t0
    ckpt_cb.save()
    final = eval_cb.last if eval_cb.last and eval_cb.last["step"] == state.step else None
    final = final or eval_cb.evaluate()
    if tmp_dir:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    done = state.step - resumed_from
    return {
        "model_dir": config.model_dir,
        "step": state.step,
        "epochs": state.step / spe,
        "min_top1": final.get("min_top1"),
        "max_top1": final.get("max_top1"),
        "eval_split": config.eval_split,
        "train_seconds": seconds,
        "images_per_second": done * config.batch_size / seconds if seconds > 0 else None,
        "resumed_from_step": resumed_from,
        "trace_count": trainer.trace_count,
        "first_step_seconds": state.first_step_seconds,
        "steady_steps_per_second": state.steady_steps_per_second(),
        "num_replicas": n_rep,
    }

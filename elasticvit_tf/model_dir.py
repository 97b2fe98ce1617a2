"""The model_dir contract (docs/formats.md#model_dir): config.json, checkpoints/, tensorboard/,
eval.json.

Written by ``elasticvit-train`` and ``elasticvit-convert``; read by search, export and the demo.

* ``config.json``: the resolved run config. At least ``space`` (preset name),
  ``space_fingerprint`` (``SearchSpace.fingerprint()``), ``space_def`` (the full space, so a
  model_dir stays readable when a preset changes), ``num_classes``, ``data`` (the data config
  dict) and ``split_seed``. Written atomically (temp file + rename).
* ``checkpoints/``: a ``tf.train.CheckpointManager`` over one ``tf.train.Checkpoint`` whose
  top-level objects are

  ============== =============================================================================
  ``model``      the supernet (live weights, arch variables included)
  ``ema``        ``EmaWeights``: the EMA shadow copy of every float weight of the supernet
                 (trainable and BN statistics, arch variables excluded), kept *separately* from
                 the live weights; on resume both are restored as saved (the official loader's
                 EMA-over-live resume is a bug, docs/method.md#bugs-fixed, not copied)
  ``optimizer``  the Keras optimizer (training checkpoints only)
  ``step``       int64 global step
  ``sampler``    string variable holding the sampler state as JSON
  ``data``       string variable holding the data position as JSON
  ============== =============================================================================

  Saving is atomic: the manager writes the shards first and then rewrites the ``checkpoint``
  index file (itself an atomic rename), so a process killed mid-write leaves the previous
  checkpoint as the latest one.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from elasticvit_tf.fileio import write_json_atomic, write_text_atomic
from elasticvit_tf.space import SearchSpace, get_space

CONFIG_NAME = "config.json"
EVAL_NAME = "eval.json"
CHECKPOINT_SUBDIR = "checkpoints"
TENSORBOARD_SUBDIR = "tensorboard"
CHECKPOINT_PREFIX = "ckpt"
LOCK_NAME = "train.lock"
ARCH_LOG_NAME = "arch_log.jsonl"


# ------------------------------------------------------------------------------- paths
def config_path(model_dir: str) -> str:
    return os.path.join(model_dir, CONFIG_NAME)


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)


def tensorboard_dir(model_dir: str) -> str:
    return os.path.join(model_dir, TENSORBOARD_SUBDIR)


def eval_path(model_dir: str) -> str:
    return os.path.join(model_dir, EVAL_NAME)


def arch_log_path(model_dir: str) -> str:
    return os.path.join(model_dir, ARCH_LOG_NAME)


def latest_checkpoint(model_dir: str) -> Optional[str]:
    """Path prefix of the last complete checkpoint in ``model_dir/checkpoints``, or None."""
    return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def checkpoint_paths(model_dir: str) -> list[str]:
    """Path prefixes of the checkpoints in ``model_dir/checkpoints``, newest first: those the
    ``checkpoint`` state file lists, or (when that file is missing or damaged) every
    ``ckpt-N.index`` found."""
    directory = checkpoint_dir(model_dir)
    try:
        state = tf.train.get_checkpoint_state(directory)
        paths = list(state.all_model_checkpoint_paths) if state else []
        if state and state.model_checkpoint_path and state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
    except (tf.errors.OpError, ValueError, UnicodeDecodeError):
        paths = []
    if not paths:
        paths = [p[: -len(".index")] for p in glob.glob(os.path.join(directory, "ckpt-*.index"))]
    paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]
    paths = [p for p in paths if os.path.exists(p + ".index")]
    return sorted(set(paths), key=_checkpoint_number, reverse=True)


def _checkpoint_number(path: str) -> int:
    try:
        return int(path.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _damage(path: str, err: BaseException) -> str:
    detail = " ".join(str(getattr(err, "message", None) or err).split())[:200]
    return f"checkpoint {path} (files {path}.index, {path}.data-*) is damaged: {detail}"


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str):
    """``checkpoint.restore(path)`` with a damaged file reported as ``ValueError`` naming it
    (a truncated data file, an ``.index`` that is not a checkpoint index)."""
    try:
        tf.train.list_variables(path)
        return checkpoint.restore(path)
    except (tf.errors.OpError, IndexError, OSError, UnicodeDecodeError) as e:
        raise ValueError(_damage(path, e)) from None


def restore_latest_intact(
    model_dir: str, restore: Callable[[str], Any], log: Callable[[str], None] = print
) -> str:
    """Restores the newest checkpoint of ``model_dir`` that reads back, newest first.

    A damaged newer checkpoint is reported through ``log`` (naming the one restored instead)
    and dropped from the ``checkpoint`` state file, so the run continues from the previous
    intact step and later saves replace it. Never starts silently from scratch: ``ValueError``
    when no checkpoint is intact.

    Args:
        model_dir: the run's directory.
        restore: ``restore(path)`` restores every object (raises on damage or mismatch).
        log: receives the fallback notice.

    Returns:
        the path prefix restored.
    """
    damaged = []
    paths = checkpoint_paths(model_dir)
    for path in paths:
        try:
            restore(path)
        except (tf.errors.OpError, IndexError, OSError, UnicodeDecodeError, ValueError) as e:
            damaged.append(path)
            log(_damage(path, e) if not isinstance(e, ValueError) else " ".join(str(e).split()))
            continue
        if damaged:
            log(f"falling back to the previous intact checkpoint {path}")
            _drop_from_state(model_dir, path, [p for p in reversed(paths) if p not in damaged])
        return path
    raise ValueError(
        f"no intact checkpoint in {checkpoint_dir(model_dir)} (damaged: {', '.join(damaged)}); "
        "resume needs one: restore the files or pick a new --model_dir"
    )


def _drop_from_state(model_dir: str, latest: str, intact: list[str]) -> None:
    """Rewrites the ``checkpoint`` state file to list only ``intact`` (oldest first), keeping
    their save times so that ``CheckpointManager`` still rotates them (``max_to_keep``)."""
    directory = checkpoint_dir(model_dir)
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError, UnicodeDecodeError):
        state = None
    stamps, preserved = {}, None
    if state is not None:
        stamps = dict(
            zip(
                (os.path.basename(p) for p in state.all_model_checkpoint_paths),
                state.all_model_checkpoint_timestamps,
            )
        )
        preserved = state.last_preserved_timestamp
    now = time.time()
    tf.compat.v1.train.update_checkpoint_state(
        directory,
        latest,
        all_model_checkpoint_paths=intact,
        all_model_checkpoint_timestamps=[stamps.get(os.path.basename(p), now) for p in intact],
        last_preserved_timestamp=preserved,
    )


def remove_orphan_temp_dirs(model_dir: str) -> list[str]:
    """Removes the ``ckpt-N_temp/`` directories a process killed while writing a checkpoint
    leaves behind; returns them."""
    found = [
        d for d in glob.glob(os.path.join(checkpoint_dir(model_dir), "*_temp")) if os.path.isdir(d)
    ]
    for d in found:
        shutil.rmtree(d, ignore_errors=True)
    return found


def trim_arch_log(model_dir: str, step: int) -> None:
    """Keeps the ``arch_log.jsonl`` records of steps before ``step`` (the restored one): a
    resumed run logs the later steps again. A torn last line is dropped."""
    path = arch_log_path(model_dir)
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] < step:
                kept.append(line if line.endswith("\n") else line + "\n")
    write_text_atomic(path, "".join(kept))


class TrainingLock:
    """An exclusive lock on a model_dir for one training process (``model_dir/train.lock``).

    ``fcntl.flock`` based: the kernel releases it when the process dies (kill -9 included), so
    a stale file never blocks a resume. The file records the holder's pid and host.
    """

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, LOCK_NAME)
        self._file = None

    def acquire(self) -> "TrainingLock":
        import fcntl
        import socket

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = " ".join(f.read().split()) or "another process"
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise ValueError(
                f"{os.path.dirname(self.path)} is being trained by {holder} (lock "
                f"{self.path}); wait for it to finish or pick another --model_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "TrainingLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------- JSON
def write_config(model_dir: str, config: dict) -> None:
    """Writes ``model_dir/config.json`` atomically.

    Args:
        model_dir: directory (created if missing).
        config: JSON-serialisable dict with at least ``space`` and ``space_fingerprint``.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict, got {type(config).__name__}")
    for key in ("space", "space_fingerprint"):
        if key not in config:
            raise ValueError(
                f"config for {model_dir!r} lacks {key!r}; expected at least 'space', "
                "'space_fingerprint', 'num_classes', 'data', 'split_seed'"
            )
    try:
        json.dumps(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config for {model_dir!r} is not JSON-serialisable: {e}") from None
    write_json_atomic(config_path(model_dir), config, sort_keys=True, fsync=True)


def read_config(model_dir: str) -> dict:
    """Reads ``model_dir/config.json``; ``ValueError`` naming the path if missing or unreadable."""
    path = config_path(model_dir)
    if not os.path.isfile(path):
        raise ValueError(
            f"{path} does not exist: {model_dir!r} is not a model_dir (expected a directory "
            "written by elasticvit-train or elasticvit-convert)"
        )
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from None
    if not isinstance(config, dict) or "space" not in config:
        raise ValueError(f"{path}: expected a JSON object with 'space' and 'space_fingerprint'")
    return config


def read_training_curves(model_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a run as ``{tag: [(step, value), ...]}`` sorted by step: the training
    TensorBoard logs (``tensorboard/train``) plus ``eval/<name>_top1`` from ``eval.json``."""
    curves: dict[str, list] = {}
    tb = os.path.join(tensorboard_dir(model_dir), "train")
    if os.path.isdir(tb):
        for name in sorted(os.listdir(tb)):
            if "tfevents" not in name:
                continue
            for event in tf.compat.v1.train.summary_iterator(os.path.join(tb, name)):
                for v in event.summary.value:
                    val = (
                        float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                    )
                    curves.setdefault(v.tag, []).append((int(event.step), val))
    try:
        with open(eval_path(model_dir)) as f:
            ev = json.load(f)
    except (OSError, json.JSONDecodeError):
        ev = {}
    for rec in ev.get("records", []) if isinstance(ev, dict) else []:
        for k, v in rec.items():
            if k.endswith("_top1") and v is not None:
                curves.setdefault(f"eval/{k}", []).append((int(rec["step"]), float(v)))
    return {k: sorted(set(v)) for k, v in curves.items()}


# ------------------------------------------------------------------------------- spaces
def space_config(space: SearchSpace) -> dict:
    """The config entries that identify a space: name, fingerprint and full definition."""
    return {
        "space": space.name,
        "space_fingerprint": space.fingerprint(),
        "space_def": space.to_dict(),
    }


def check_space(config: dict, space: SearchSpace, model_dir: Optional[str] = None) -> None:
    """Raises ``ValueError`` when the config's space fingerprint differs from ``space``'s."""
    have_name = config.get("space")
    have_hash = config.get("space_fingerprint")
    want_hash = space.fingerprint()
    if have_hash != want_hash:
        where = f"model_dir {model_dir}" if model_dir else "model_dir config"
        raise ValueError(
            f"{where} holds space {have_name!r} (hash {have_hash}), expected "
            f"{space.name!r} ({want_hash}); use another --model_dir or the matching --space"
        )


def space_from_config(config: dict, space_name: Optional[str] = None) -> SearchSpace:
    """The space a config was written for, checked against its fingerprint.

    With ``space_name`` the preset of that name is used (and must match). Otherwise the preset
    named in the config is used when its fingerprint matches, else the stored ``space_def``.
    """
    if space_name is not None:
        space = get_space(space_name)
        check_space(config, space)
        return space
    name = config.get("space")
    try:
        space = get_space(name)
        if space.fingerprint() == config.get("space_fingerprint"):
            return space
    except ValueError:
        space = None
    if "space_def" in config:
        stored = SearchSpace.from_dict(config["space_def"])
        check_space(config, stored)
        return stored
    if space is None:
        raise ValueError(f"config names unknown space {name!r} and holds no 'space_def'")
    check_space(config, space)
    return space


# ------------------------------------------------------------------------------- EMA store
def ema_source_variables(net) -> list:
    """The supernet weights an EMA tracks: every float weight except the arch variables."""
    arch_ids = {id(v) for v in getattr(net, "arch_variables", ())}
    return [v for v in net.weights if id(v) not in arch_ids and "float" in str(v.dtype)]


class EmaWeights(tf.Module):
    """Shadow copies of a model's float weights (the EMA), one variable per source weight.

    Create it under the distribution strategy's scope so the shadows are mirrored. The update
    rule lives in ``elasticvit_tf.train.optim``; this class only stores and copies.

    Args:
        source_variables: the weights to shadow, usually ``ema_source_variables(net)``.
        aggregation: ``"none"`` or ``"only_first_replica"`` (lets a train step running in a
            replica context update mirrored shadows).
    """

    def __init__(self, source_variables: Sequence, name: str = "ema", aggregation: str = "none"):
        super().__init__(name=name)
        aggregations = {
            "none": tf.VariableAggregation.NONE,
            "only_first_replica": tf.VariableAggregation.ONLY_FIRST_REPLICA,
        }
        if aggregation not in aggregations:
            raise ValueError(f"aggregation={aggregation!r}; expected one of {list(aggregations)}")
        self.source_variables = list(source_variables)
        with self.name_scope:
            self.shadow = [
                tf.Variable(
                    tf.convert_to_tensor(v.value),
                    trainable=False,
                    name=f"shadow_{i}",
                    aggregation=aggregations[aggregation],
                )
                for i, v in enumerate(self.source_variables)
            ]

    def reset(self) -> None:
        """Copies the live weights into the shadows."""
        for s, v in zip(self.shadow, self.source_variables):
            s.assign(tf.convert_to_tensor(v.value))

    def copy_to_model(self) -> None:
        """Overwrites the live weights with the shadows."""
        for s, v in zip(self.shadow, self.source_variables):
            v.assign(s.read_value())

    def numpy(self) -> list:
        return [s.numpy() for s in self.shadow]

    def set_numpy(self, values: Sequence[np.ndarray]) -> None:
        if len(values) != len(self.shadow):
            raise ValueError(
                f"ema_weights: got {len(values)} arrays, expected {len(self.shadow)} "
                "(one per ema_source_variables(net) entry, in that order)"
            )
        for s, val in zip(self.shadow, values):
            if tuple(np.shape(val)) != tuple(s.shape):
                raise ValueError(
                    f"ema_weights: array of shape {np.shape(val)} for shadow {s.name} of "
                    f"shape {tuple(s.shape)}"
                )
            s.assign(val)


# ------------------------------------------------------------------------------- checkpoints
def make_checkpoint(
    net,
    ema: Optional[EmaWeights] = None,
    optimizer=None,
    step: Optional[tf.Variable] = None,
    sampler_state: Optional[tf.Variable] = None,
    data_state: Optional[tf.Variable] = None,
) -> tf.train.Checkpoint:
    """The one checkpoint layout of docs/formats.md#model_dir (entries left None are simply
    absent)."""
    objects = {
        "model": net,
        "ema": ema,
        "optimizer": optimizer,
        "step": step,
        "sampler": sampler_state,
        "data": data_state,
    }
    return tf.train.Checkpoint(**{k: v for k, v in objects.items() if v is not None})


def checkpoint_manager(
    directory: str, checkpoint: tf.train.Checkpoint, max_to_keep: int = 3
) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(
        checkpoint, directory, max_to_keep=max_to_keep, checkpoint_name=CHECKPOINT_PREFIX
    )


def checkpoint_has(path: str, entry: str) -> bool:
    """Whether the checkpoint at ``path`` holds a top-level entry (``ema``, ``optimizer``...);
    ``ValueError`` naming the files when the checkpoint is damaged."""
    prefix = entry + "/"
    try:
        names = [name for name, _ in tf.train.list_variables(path)]
    except (tf.errors.OpError, IndexError, OSError, UnicodeDecodeError) as e:
        raise ValueError(_damage(path, e)) from None
    return any(name.startswith(prefix) for name in names)


def read_sampler_state(model_dir: str) -> Optional[dict]:
    """The sampler state (``Sampler.get_state()``, docs/formats.md#model_dir) saved in the
    latest checkpoint; None without a checkpoint or when it holds no sampler state.

    Raises:
        ValueError: the saved state is not a JSON object.
    """
    path = latest_checkpoint(model_dir)
    if path is None or not checkpoint_has(path, "sampler"):
        return None
    raw = tf.train.load_variable(path, "sampler/.ATTRIBUTES/VARIABLE_VALUE")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if not text:
        return None
    try:
        state = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the sampler state is not valid JSON: {e}") from None
    if not isinstance(state, dict):
        raise ValueError(
            f"{path}: the sampler state is a {type(state).__name__}; expected an object"
        )
    return state


def build_supernet(space: SearchSpace, config: dict):
    """Builds (creates every variable of) the supernet described by a model_dir config."""
    from elasticvit_tf.supernet import ElasticSupernet

    kwargs = dict(config.get("supernet_kwargs", {}))
    net = ElasticSupernet(
        space, int(config["num_classes"]), num_slots=int(config.get("num_slots", 4)), **kwargs
    )
    ensure_built(net, space, channels=int(config.get("input_channels", 3)))
    return net


def ensure_built(net, space: SearchSpace, channels: int = 3) -> None:
    """Creates the supernet's variables (one forward at the largest resolution) if needed."""
    if net.built and net.weights:
        return
    r = space.max_resolution
    net(tf.zeros([1, r, r, channels]), training=False)


def save_supernet(model_dir: str, net, config: dict, ema_weights=None, step: int = 0) -> str:
    """Writes config.json and a weights checkpoint (+EMA, no optimizer); returns its path.

    Used by the converter. ``config`` must name the net's space; a model_dir that already holds
    a different space is refused before anything is written.

    Args:
        model_dir: output directory.
        net: a built ``ElasticSupernet``.
        config: model_dir config (``space``, ``num_classes``, ...); space entries are filled in
            from ``net.space`` when missing.
        ema_weights: None, or a list of arrays aligned with ``ema_source_variables(net)``.
        step: recorded as the checkpoint's step.
    """
    config = dict(config)
    space = getattr(net, "space", None)
    if space is None:
        space = space_from_config(config)
    for k, v in space_config(space).items():
        config.setdefault(k, v)
    check_space(config, space, model_dir)
    if os.path.isfile(config_path(model_dir)):
        check_space(read_config(model_dir), space, model_dir)
    ema = None
    if ema_weights is not None:
        ema = EmaWeights(ema_source_variables(net))
        ema.set_numpy(list(ema_weights))
    ckpt = make_checkpoint(net, ema=ema, step=tf.Variable(int(step), dtype=tf.int64))
    write_config(model_dir, config)
    manager = checkpoint_manager(checkpoint_dir(model_dir), ckpt)
    return manager.save(checkpoint_number=int(step))


def load_supernet(
    model_dir: str, space_name: Optional[str] = None, use_ema: bool = True, checkpoint=None
):
    """Builds the supernet a model_dir describes and restores its latest checkpoint.

    Args:
        model_dir: a directory written by ``elasticvit-train`` or ``elasticvit-convert``.
        space_name: the preset the caller expects; refused if the model_dir holds another one.
        use_ema: load the EMA weights into the net when the checkpoint has them.
        checkpoint: a specific checkpoint path instead of the latest.

    Returns:
        ``(net, config)``.
    """
    config = read_config(model_dir)
    try:
        space = space_from_config(config, space_name)
    except ValueError as e:
        raise ValueError(f"{model_dir}: {e}") from None
    path = checkpoint or latest_checkpoint(model_dir)
    if path is None:
        raise ValueError(
            f"{checkpoint_dir(model_dir)} holds no checkpoint; expected one written by "
            "elasticvit-train or elasticvit-convert"
        )
    net = build_supernet(space, config)
    try:
        has_ema = checkpoint_has(path, "ema")
    except (tf.errors.OpError, IndexError, OSError, UnicodeDecodeError) as e:
        raise ValueError(_damage(path, e)) from None
    ema = EmaWeights(ema_source_variables(net)) if has_ema else None
    status = restore_checkpoint(make_checkpoint(net, ema=ema), path)
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(
            f"checkpoint {path} does not match the supernet built from {config_path(model_dir)}: "
            f"{str(e)[:500]}"
        ) from None
    if use_ema and ema is not None:
        ema.copy_to_model()
    return net, config

"""Input pipelines: Fashion-MNIST IDX files, scikit-learn digits, TFDS and image folders.

Every split yields ``(images float32 [B, S, S, 3], labels int32 [B])`` with images normalised by
the ImageNet mean/std (grey images tiled to 3 channels); the supernet resizes in-model to each
subnet's resolution. Splits (docs/design.md#measured-decisions,
docs/method.md#data-and-augmentation, docs/method.md#bn-recalibration):

* ``test``: the source's test split (a TFDS/folder source with a validation split but no test
  split uses its validation split as ``test``; a source with neither holds out 20 % of train
  with a fixed seed).
* ``val``: the source's own second validation split if it has one, else ``val_fraction`` of
  train carved with ``split_seed``.
* ``search``: ``search_size`` train images carved with ``split_seed`` (held out from ``train``;
  used by the subnet search to rank subnets).
* ``train``: the rest of train, optionally capped at ``max_train_examples``.

Typical use::

    config, notices = resolve_data_config(DataConfig())   # falls back to digits if needed
    info = get_info(config)
    train_ds = make_dataset(config, "train", 128, training=True, repeat=True, seed=0)

Loading a source reads the whole data set into memory. A caller that builds several datasets
from one config passes a ``DataCache`` it owns (``cache=``) so the source is read once; there is
no module-level cache, so without one every call reads its source afresh (and sees changed
files).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Optional, Union

import numpy as np
import tensorflow as tf

from elasticvit_tf import data_sources as sources
from elasticvit_tf.data_augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    finish_batch,
    normalize_images,
    preprocess_batch,
    preprocess_example,
)
from elasticvit_tf.data_sources import FASHION_MNIST_DEFAULT_DIR

__all__ = [
    "AUGMENT_MODES",
    "DATASET_FORMS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "DataCache",
    "DataConfig",
    "DatasetInfo",
    "dataset_from_flag",
    "distribute_dataset",
    "get_info",
    "make_dataset",
    "normalize_images",
    "resolve_data_config",
]

SPLITS = ("train", "val", "test", "search")
AUGMENT_MODES = ("auto", "none", "light", "imagenet")
DATASET_FORMS = ("fashion_mnist", "digits", "tfds:NAME", "folder:PATH")
# Sources with no test split hold out this much of train with a fixed seed.
HELD_OUT_TEST_FRACTION = 0.2
HELD_OUT_TEST_SEED = 20230
# The search split never takes more than this fraction of the train images left after val.
MAX_SEARCH_FRACTION = 0.25
LIGHT_AUTO_MAX_SIDE = 64  # "auto" picks "light" for sources whose images are at most this big


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set to read and how to split, augment and size it.

    Attributes:
        dataset: ``"fashion_mnist"``, ``"digits"``, ``"tfds:NAME"`` or ``"folder:PATH"``.
        data_dir: fashion_mnist only: folder holding the four IDX files (plain or .gz);
            ``None`` means the Debian package folder ``/usr/share/datasets/fashion-mnist``.
        tfds_data_dir: TFDS ``data_dir``.
        manual_dir: TFDS ``manual_dir`` (ImageNet-2012 archives), used to prepare offline.
        image_size: side of the square images the pipeline yields.
        val_fraction: fraction of train carved as ``val`` when the source has no val split.
        search_size: number of train images held out as the ``search`` split.
        split_seed: seed of the val/search carve.
        augment: ``"auto"``, ``"none"``, ``"light"`` (pad + random crop + flip) or
            ``"imagenet"`` (RandomResizedCrop + flip; eval centre crop 0.875).
        max_train_examples: cap on the ``train`` split (a random subset), for quick runs.
    """

    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    tfds_data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    image_size: int = 32
    val_fraction: float = 0.0
    search_size: int = 5000
    split_seed: int = 0
    augment: str = "auto"
    max_train_examples: Optional[int] = None

    def __post_init__(self):
        dataset_from_flag(self.dataset)  # validates the form
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)):
            raise ValueError(f"image_size must be an int; received {self.image_size!r}.")
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4; received {self.image_size}.")
        if not 0.0 <= float(self.val_fraction) < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5); received {self.val_fraction!r}.")
        if not isinstance(self.search_size, (int, np.integer)) or self.search_size < 0:
            raise ValueError(f"search_size must be an int >= 0; received {self.search_size!r}.")
        if not isinstance(self.split_seed, (int, np.integer)) or self.split_seed < 0:
            raise ValueError(f"split_seed must be an int >= 0; received {self.split_seed!r}.")
        if self.augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}; received {self.augment!r}.")
        if self.max_train_examples is not None and (
            not isinstance(self.max_train_examples, (int, np.integer))
            or self.max_train_examples < 1
        ):
            raise ValueError(
                "max_train_examples must be None or an int >= 1; received "
                f"{self.max_train_examples!r}."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        """Builds a config from ``to_dict()`` output; unknown keys raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"DataConfig.from_dict expects a dict; received {type(d).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown DataConfig key(s) {unknown}; expected a subset of {sorted(known)}."
            )
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a resolved `DataConfig` yields (from `get_info`)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    channels_in: int
    notices: tuple[str, ...]
    skipped_corrupt: int


def dataset_from_flag(value: str) -> dict:
    """Parses a ``--dataset`` string into `DataConfig` fields (``{"dataset": canonical}``).

    Accepts ``fashion_mnist`` (or ``fashion-mnist``), ``digits``, ``tfds:NAME`` (NAME may
    carry ``/config`` and ``:version``) and ``folder:PATH`` (made absolute).

    Raises:
        ValueError: for anything else, listing the accepted forms.
    """
    if not isinstance(value, str):
        raise ValueError(
            f"dataset must be a string, one of {', '.join(DATASET_FORMS)}; received {value!r}."
        )
    v = value.strip()
    if v in ("fashion_mnist", "fashion-mnist"):
        return {"dataset": "fashion_mnist"}
    if v == "digits":
        return {"dataset": "digits"}
    if v.startswith("tfds:") and v[5:].strip():
        return {"dataset": "tfds:" + v[5:].strip()}
    if v.startswith("folder:") and v[7:].strip():
        return {"dataset": "folder:" + os.path.abspath(os.path.expanduser(v[7:].strip()))}
    raise ValueError(
        f"Unknown dataset {value!r}; expected one of: fashion_mnist, digits, tfds:NAME "
        "(e.g. tfds:imagenet2012), folder:PATH (class sub-folders)."
    )


def resolve_data_config(
    config: Union[DataConfig, dict], fallback: bool = True
) -> tuple[DataConfig, list[str]]:
    """Canonicalises a config and checks that its data can be found.

    For ``fashion_mnist`` the data folder is made explicit; when its IDX files are missing and
    ``fallback`` is true the config switches to ``digits`` and a notice says so and where it
    looked (otherwise ``ValueError``).

    Returns:
        ``(resolved_config, notices)``.
    """
    if isinstance(config, dict):
        config = DataConfig.from_dict(config)
    if not isinstance(config, DataConfig):
        raise ValueError(f"Expected a DataConfig or dict; received {type(config).__name__}.")
    config = dataclasses.replace(config, **dataset_from_flag(config.dataset))
    notices = []
    if config.dataset == "fashion_mnist":
        data_dir = os.path.abspath(os.path.expanduser(config.data_dir or FASHION_MNIST_DEFAULT_DIR))
        missing = sources.missing_fashion_mnist_files(data_dir)
        if missing and fallback:
            notices.append(
                f"fashion_mnist: IDX files not found in {data_dir!r} (missing "
                f"{', '.join(missing)}; install the Debian package dataset-fashion-mnist or "
                "pass --data_dir); falling back to 'digits' (scikit-learn, 1797 8x8 images)."
            )
            return dataclasses.replace(config, dataset="digits", data_dir=None), notices
        if missing:
            # load_fashion_mnist raises the full error naming the folder and the files.
            sources.load_fashion_mnist(data_dir)
        config = dataclasses.replace(config, data_dir=data_dir)
    return config, notices


# ---------------------------------------------------------------------------------------------
# Sources and splits (cached by the caller's DataCache)
# ---------------------------------------------------------------------------------------------


def _source_key(config: DataConfig) -> tuple:
    return (config.dataset, config.data_dir, config.tfds_data_dir, config.manual_dir)


def _read_source(config: DataConfig):
    if config.dataset == "fashion_mnist":
        return sources.load_fashion_mnist(config.data_dir or FASHION_MNIST_DEFAULT_DIR)
    if config.dataset == "digits":
        return sources.load_digits_source()
    if config.dataset.startswith("tfds:"):
        return sources.load_tfds(config.dataset[5:], config.tfds_data_dir, config.manual_dir)
    return sources.load_folder(config.dataset[7:])


class DataCache:
    """Loaded sources and their split plans, owned by a caller that builds several datasets.

    ``get_info``, ``make_dataset`` and ``distribute_dataset`` take ``cache=``: with a cache a
    source is read once and reused; without one each call reads it afresh. A cache holds whole
    data sets in memory (Fashion-MNIST: about 55 MB), at most ``max_sources`` of them (the
    least recently used one is dropped first); ``clear()`` or dropping the object frees them.
    Not thread-safe: build datasets from one thread (``tf.data`` runs the pipelines itself).

    Args:
        max_sources: sources kept at once (>= 1).
    """

    def __init__(self, max_sources: int = 2):
        if isinstance(max_sources, bool) or not isinstance(max_sources, int) or max_sources < 1:
            raise ValueError(f"max_sources={max_sources!r}; expected a positive int")
        self.max_sources = max_sources
        self._sources: collections.OrderedDict = collections.OrderedDict()
        self._plans: dict = {}  # source key -> {config: (plan, notices)}

    def source(self, config: DataConfig):
        """The loaded source of ``config`` (read on first use)."""
        key = _source_key(config)
        if key in self._sources:
            self._sources.move_to_end(key)
        else:
            self._sources[key] = _read_source(config)
            while len(self._sources) > self.max_sources:
                old, _ = self._sources.popitem(last=False)
                self._plans.pop(old, None)
        return self._sources[key]

    def split_plan(self, config: DataConfig) -> tuple[dict, tuple[str, ...]]:
        """``_split_plan`` of ``config``, computed once per config."""
        source = self.source(config)
        plans = self._plans.setdefault(_source_key(config), {})
        if config not in plans:
            plans[config] = _split_plan(config, source)
        return plans[config]

    def clear(self) -> None:
        """Forgets every loaded source and split plan."""
        self._sources.clear()
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._sources)


def _source_and_plan(config: DataConfig, cache: Optional[DataCache]):
    """``(source, plan, plan notices)``, from ``cache`` when one is given."""
    if cache is None:
        source = _read_source(config)
        return (source, *_split_plan(config, source))
    return (cache.source(config), *cache.split_plan(config))


def _native_splits(source) -> tuple[str, ...]:
    if isinstance(source, sources.TfdsSource):
        return tuple(source.split_names)
    return tuple(source.splits)


def _split_plan(config: DataConfig, source) -> tuple[dict, tuple[str, ...]]:
    """``{split: (native split, sorted int64 indices)}`` plus notices, for a resolved config and
    its loaded source."""
    native = _native_splits(source)
    notices = list(source.notices)
    n = source.split_size("train")
    pool = np.arange(n)
    plan = {}
    if "test" in native:
        plan["test"] = ("test", np.arange(source.split_size("test")))
    elif "val" in native:
        plan["test"] = ("val", np.arange(source.split_size("val")))
        notices.append(
            f"{source.name} has no test split: its validation split serves as 'test'; 'val' is "
            "carved from train (val_fraction)."
        )
        native = tuple(s for s in native if s != "val")
    else:
        perm = np.random.default_rng(HELD_OUT_TEST_SEED).permutation(n)
        n_test = int(round(HELD_OUT_TEST_FRACTION * n))
        plan["test"] = ("train", np.sort(perm[:n_test]))
        pool = np.sort(perm[n_test:])
        notices.append(
            f"{source.name} has no test split: held out {n_test} train images (fixed seed) as "
            "'test'."
        )
    rng = np.random.default_rng(config.split_seed)
    perm = pool[rng.permutation(len(pool))]
    if "val" in native:
        plan["val"] = ("val", np.arange(source.split_size("val")))
        n_val = 0
        if config.val_fraction:
            notices.append(
                f"{source.name} has its own validation split: val_fraction="
                f"{config.val_fraction} ignored."
            )
    else:
        n_val = int(round(config.val_fraction * len(perm)))
        plan["val"] = ("train", np.sort(perm[:n_val]))
    max_search = int(MAX_SEARCH_FRACTION * (len(perm) - n_val))
    n_search = min(config.search_size, max_search)
    # The default size is a cap (5000 on ImageNet-size data): only a size the user chose and
    # that cannot be met is worth a notice.
    if n_search < config.search_size != DataConfig.search_size:
        notices.append(
            f"search_size={config.search_size} is too large for {len(perm) - n_val} train "
            f"images: the search split holds {n_search} ({MAX_SEARCH_FRACTION:.0%})."
        )
    plan["search"] = ("train", np.sort(perm[n_val : n_val + n_search]))
    rest = perm[n_val + n_search :]
    if config.max_train_examples is not None:
        rest = rest[: config.max_train_examples]
    plan["train"] = ("train", np.sort(rest))
    return plan, tuple(notices)


def get_info(config: Union[DataConfig, dict], cache: Optional[DataCache] = None) -> DatasetInfo:
    """Describes the data a config yields (loads and scans the source; once with a ``cache``)."""
    config, notices = resolve_data_config(config, fallback=False)
    source, plan, plan_notices = _source_and_plan(config, cache)
    if len(source.class_names) < 2:
        raise ValueError(
            f"dataset {config.dataset!r} has {len(source.class_names)} class(es) "
            f"{list(source.class_names)}; a classification data set needs at least 2"
        )
    return DatasetInfo(
        name=source.name,
        num_classes=len(source.class_names),
        class_names=tuple(source.class_names),
        split_sizes={s: int(len(plan[s][1])) for s in SPLITS},
        channels_in=int(source.channels),
        notices=tuple(notices) + plan_notices,
        skipped_corrupt=int(getattr(source, "skipped_corrupt", 0)),
    )


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------


def _augment_mode(config: DataConfig, source) -> str:
    if config.augment != "auto":
        return config.augment
    side = source.native_side
    return "light" if side is not None and side <= LIGHT_AUTO_MAX_SIDE else "imagenet"


def _light_pad(native_side: int) -> int:
    return max(1, int(round(native_side / 8)))


# ---------------------------------------------------------------------------------------------


def _seeds(seed: Optional[int], pipeline_id: int) -> tuple[int, int]:
    """(shuffle seed, augmentation seed) for one input pipeline."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    state = np.random.SeedSequence([int(seed), int(pipeline_id)]).generate_state(2)
    return int(state[0] & 0x7FFFFFFF), int(state[1] & 0x7FFFFFFF)


def make_dataset(
    config: Union[DataConfig, dict],
    split: str,
    batch_size: int,
    *,
    training: bool = False,
    shuffle: Optional[bool] = None,
    repeat: bool = False,
    seed: Optional[int] = None,
    input_context: Any = None,
    drop_remainder: Optional[bool] = None,
    cache: Optional[DataCache] = None,
):
    """Batched ``(images float32 [B, S, S, 3], labels int32 [B])`` for one split.

    Args:
        config: a `DataConfig` (fashion_mnist must be present: call `resolve_data_config`
            first to fall back to digits).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"search"``.
        batch_size: the global batch size; with ``input_context`` each pipeline yields
            ``input_context.get_per_replica_batch_size(batch_size)`` examples per batch.
        training: apply training augmentation.
        shuffle: shuffle examples (default: ``training``).
        repeat: repeat forever.
        seed: makes shuffling and augmentation deterministic; ``None`` draws a fresh seed.
        input_context: a ``tf.distribute.InputContext``: shard by input pipeline.
        drop_remainder: drop the last partial batch (default: ``training or repeat``).
        cache: the caller's ``DataCache``; None reads the source afresh.

    Returns:
        A ``tf.data.Dataset``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; received {split!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive int; received {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; received {batch_size!r}.")
    config, _ = resolve_data_config(config, fallback=False)
    source, plan, _ = _source_and_plan(config, cache)
    native, idx = plan[split]
    if not len(idx):
        hint = {
            "val": "set val_fraction > 0 (the source has no validation split)",
            "search": "set search_size > 0",
        }.get(split, "check the data set")
        raise ValueError(f"Split {split!r} of {source.name} is empty; {hint}.")
    shuffle = training if shuffle is None else shuffle
    drop_remainder = (training or repeat) if drop_remainder is None else drop_remainder
    pipeline_id, num_pipelines = 0, 1
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        pipeline_id = input_context.input_pipeline_id
        num_pipelines = input_context.num_input_pipelines
    shuffle_seed, aug_seed = _seeds(seed, pipeline_id)
    mode = _augment_mode(config, source)
    size = config.image_size
    side = source.native_side or size
    pad = _light_pad(side if isinstance(source, sources.ArraySource) else size)
    flip = bool(source.flip)

    full = len(idx) == source.split_size(native)
    if isinstance(source, sources.TfdsSource):
        ds = source.as_dataset(native)
        if not full:
            mask = np.zeros(source.split_size(native), bool)
            mask[idx] = True
            mask_t = tf.constant(mask)
            ds = ds.enumerate().filter(lambda i, ex: tf.gather(mask_t, i))
            ds = ds.map(lambda i, ex: ex)
        if num_pipelines > 1:
            ds = ds.shard(num_pipelines, pipeline_id)
        n_local = (len(idx) - pipeline_id + num_pipelines - 1) // num_pipelines
    else:
        idx = idx[pipeline_id::num_pipelines]
        n_local = len(idx)
    if n_local == 0:
        raise ValueError(
            f"Split {split!r} of {source.name} has {len(plan[split][1])} examples: too few for "
            f"{num_pipelines} input pipelines."
        )

    if isinstance(source, sources.ArraySource):
        images = tf.constant(source.splits[native][0][idx])
        labels = tf.constant(source.splits[native][1][idx])
        ds = tf.data.Dataset.range(n_local)
        if shuffle:
            ds = ds.shuffle(n_local, seed=shuffle_seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()

        def batch_fn(step, i):
            s = tf.stack([tf.constant(aug_seed, tf.int64), step])
            x = preprocess_batch(tf.gather(images, i), mode, training, s, size, pad, flip)
            return x, tf.gather(labels, i)

        ds = ds.map(batch_fn, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    if isinstance(source, sources.FileSource):
        paths = source.splits[native][0][idx].astype(str)
        ds = tf.data.Dataset.from_tensor_slices((paths, source.splits[native][1][idx]))

        def read(path, label):
            raw = tf.io.read_file(path)
            return tf.io.decode_image(raw, channels=3, expand_animations=False), label

        shuffle_buffer = n_local
    else:

        def read(encoded, label):
            return source.decode(encoded), label

        # Shuffles encoded examples: cheap to buffer, decoded only after sharding/filtering.
        shuffle_buffer = min(n_local, 10_000)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # Images that passed the source's checks but fail to decode here are dropped, not fatal.
    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
    ds = ds.enumerate()

    def example_fn(step, example):
        image, label = example
        s = tf.stack([tf.constant(aug_seed, tf.int64), step])
        return preprocess_example(image, mode, training, s, size, pad, flip), label

    ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    batch_seed = (aug_seed + 1) & 0x7FFFFFFF  # distinct from the per-example seeds

    def batch_fn(step, batch):
        s = tf.stack([tf.constant(batch_seed, tf.int64), step])
        return finish_batch(batch[0], mode, training, s), batch[1]

    ds = ds.map(batch_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def distribute_dataset(strategy, config, split, global_batch_size, cache=None, **kw):
    """``strategy.distribute_datasets_from_function`` over `make_dataset` (one shard each); the
    pipelines share ``cache`` (a new ``DataCache`` when None), so the source is read once."""
    config, _ = resolve_data_config(config, fallback=False)
    cache = DataCache() if cache is None else cache
    cache.split_plan(config)  # load and validate eagerly, outside the dataset function

    def dataset_fn(input_context):
        return make_dataset(
            config, split, global_batch_size, input_context=input_context, cache=cache, **kw
        )

    return strategy.distribute_datasets_from_function(dataset_fn)

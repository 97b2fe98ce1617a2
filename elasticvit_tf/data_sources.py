"""Raw data sources behind `elasticvit_tf.data`: Fashion-MNIST IDX files, scikit-learn digits,
image folders and TFDS builders.

A source only knows its *native* splits (``train`` and, when the data set has them, ``val`` and
``test``) and how to produce undecorated examples ``(image uint8 [H, W, C], label int32)``.
Carving the ``search``/``val`` splits, augmentation, batching and sharding live in ``data.py``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import os
import zlib
from typing import Any, Optional, Sequence

import numpy as np

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# (split, images file, labels file); each may also be present gzipped (".gz").
FASHION_MNIST_FILES = (
    ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Folder sources without their own test split hold out this fraction (by file-name hash, so
# the test set is stable across split seeds and when files are added).
FOLDER_TEST_FRACTION = 0.2
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the digits test split never moves

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------------------------------------
# Source records
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _PairSource:
    """Fields of the sources that hold each split as ``(items [N], labels int32 [N])``."""

    name: str
    class_names: tuple[str, ...]
    splits: dict
    channels: int
    flip: bool

    def split_size(self, split: str) -> int:
        return int(len(self.splits[split][1]))


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource(_PairSource):
    """An in-memory data set: ``splits[name] = (images uint8 [N, H, W, C], labels int32 [N])``."""

    notices: tuple[str, ...] = ()

    @property
    def native_side(self) -> int:
        images = self.splits["train"][0]
        return int(max(images.shape[1], images.shape[2]))


@dataclasses.dataclass(frozen=True, eq=False)
class FileSource(_PairSource):
    """Image files on disk: ``splits[name] = (paths str [N], labels int32 [N])``."""

    native_side: int
    skipped_corrupt: int
    notices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsSource:
    """A prepared TFDS builder. ``split_names[name]`` is the TFDS split behind our split."""

    name: str
    class_names: tuple[str, ...]
    builder: Any
    split_names: dict
    sizes: dict
    image_key: str
    label_key: str
    channels: int
    flip: bool
    native_side: Optional[int]
    notices: tuple[str, ...] = ()

    def split_size(self, split: str) -> int:
        return int(self.sizes[split])

    def as_dataset(self, split: str):
        """``(encoded image bytes, label int32)`` pairs of one native split, in a fixed order.

        Images stay encoded so that filtering and sharding happen before the (costly) decode;
        `decode` turns the bytes into uint8 [H, W, C].
        """
        import tensorflow as tf
        import tensorflow_datasets as tfds

        ds = self.builder.as_dataset(
            split=self.split_names[split],
            shuffle_files=False,
            decoders={self.image_key: tfds.decode.SkipDecoding()},
        )
        image_key, label_key = self.image_key, self.label_key
        return ds.map(
            lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def decode(self, encoded):
        """Encoded image bytes -> uint8 [H, W, channels]."""
        import tensorflow as tf

        return tf.io.decode_image(encoded, channels=self.channels, expand_animations=False)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------------------------


def find_idx_file(data_dir: str, stem: str) -> Optional[str]:
    """Path of ``stem`` or ``stem.gz`` in ``data_dir`` (plain file preferred), else None."""
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    return None


def missing_fashion_mnist_files(data_dir: str) -> list[str]:
    """Names of the four Fashion-MNIST IDX files absent from ``data_dir``."""
    missing = []
    for _, images, labels in FASHION_MNIST_FILES:
        for stem in (images, labels):
            if find_idx_file(data_dir, stem) is None:
                missing.append(stem + "[.gz]")
    return missing


def read_idx(path: str, expected_ndim: Optional[int] = None) -> np.ndarray:
    """Parses one IDX file (optionally gzipped) into a numpy array.

    Args:
        path: file path; a ``.gz`` suffix means gzip.
        expected_ndim: if given, the number of dimensions the header must declare.

    Returns:
        The array with the shape declared in the header.

    Raises:
        ValueError: naming the file, for a bad magic number, a wrong number of dimensions, a
            truncated or oversized payload, or an unreadable gzip stream.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"Could not read IDX file {path!r}: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"IDX file {path!r} is truncated: {len(raw)} bytes, expected a header.")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"IDX file {path!r} has bad magic number 0x{raw[:4].hex()}; expected 0x0000TTDD with "
            f"type TT in {{08,09,0B,0C,0D,0E}} and DD >= 1 dimensions (e.g. 0x00000803 for "
            "images, 0x00000801 for labels)."
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"IDX file {path!r} declares {ndim} dimensions; expected {expected_ndim}.")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise ValueError(f"IDX file {path!r} is truncated inside its header.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    payload = len(raw) - header_end
    if payload != expected:
        raise ValueError(
            f"IDX file {path!r} is {'truncated' if payload < expected else 'too long'}: header "
            f"declares shape {shape} ({expected} data bytes), file holds {payload} data bytes."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)


def load_fashion_mnist(data_dir: str) -> ArraySource:
    """Loads the four Fashion-MNIST IDX files from ``data_dir``."""
    missing = missing_fashion_mnist_files(data_dir)
    if missing:
        raise ValueError(
            f"Fashion-MNIST not found in {data_dir!r}: missing {', '.join(missing)}. Expected "
            "the four IDX files (plain or .gz) of the Debian package dataset-fashion-mnist "
            f"({FASHION_MNIST_DEFAULT_DIR}) or a --data_dir holding them; or use "
            "--dataset=digits."
        )
    splits = {}
    for split, images_stem, labels_stem in FASHION_MNIST_FILES:
        images_path = find_idx_file(data_dir, images_stem)
        labels_path = find_idx_file(data_dir, labels_stem)
        images = read_idx(images_path, expected_ndim=3)
        labels = read_idx(labels_path, expected_ndim=1)
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise ValueError(
                f"Fashion-MNIST IDX files {images_path!r} / {labels_path!r} must hold unsigned "
                f"bytes (type 0x08); got {images.dtype} / {labels.dtype}."
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{images_path!r} holds {images.shape[0]} images but {labels_path!r} holds "
                f"{labels.shape[0]} labels; expected equal counts."
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(
                f"{labels_path!r} holds label {int(labels.max())}; expected labels in [0, 9]."
            )
        splits[split] = (images[..., None], labels.astype(np.int32))
    return ArraySource(
        name="fashion_mnist",
        class_names=FASHION_MNIST_CLASSES,
        splits=splits,
        channels=1,
        flip=True,
    )


# ---------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------


def load_digits_source() -> ArraySource:
    """scikit-learn's bundled 8x8 digits (1797 images), fixed stratified 80/20 train/test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; NOTE: scale to the 0..255 range of every other source.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        take = int(round(len(idx) * DIGITS_TEST_FRACTION))
        test.append(rng.permutation(idx)[:take])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return ArraySource(
        name="digits",
        class_names=tuple(str(i) for i in range(10)),
        splits={
            "train": (images[train_idx], labels[train_idx]),
            "test": (images[test_idx], labels[test_idx]),
        },
        channels=1,
        flip=False,  # digits are not mirror-symmetric
    )


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------

_FOLDER_SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


def _class_dirs(root: str) -> list[str]:
    return sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d[0] != "."
    )


def _list_images(root: str, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = os.path.join(root, cls)
        if not os.path.isdir(cls_dir):
            continue
        for dirpath, dirnames, filenames in os.walk(cls_dir):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMAGE_EXTENSIONS) and fn[0] != ".":
                    paths.append(os.path.join(dirpath, fn))
                    labels.append(label)
    return paths, labels


def _check_image(path: str) -> Optional[tuple[int, int, str]]:
    """(height, width, PIL mode) of a decodable image, or None when corrupt/unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()  # structure / checksums, without decoding pixels
        with Image.open(path) as img:
            height, width, mode = img.height, img.width, img.mode
            if img.format == "JPEG":
                # Decoding at 1/8 scale still reads every entropy-coded block (so truncation
                # is caught) at a fraction of the cost of a full decode.
                img.draft(mode, (max(1, width // 8), max(1, height // 8)))
            # NOTE: verify() barely inspects JPEG payloads; load() decodes, so truncated files
            # are caught here rather than inside the tf.data pipeline.
            img.load()
            return height, width, mode
    except Exception:  # any decoding failure means "skip this file"
        return None


def _check_images(paths: Sequence[str]) -> list:
    """`_check_image` over many files, in threads (PIL releases the GIL while decoding)."""
    if len(paths) < 64:
        return [_check_image(p) for p in paths]
    workers = min(32, (os.cpu_count() or 1) * 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_check_image, paths, chunksize=64))


def load_folder(root: str) -> FileSource:
    """Scans an image folder: ``root/CLASS/*.jpg`` or ``root/{train,val,test}/CLASS/*``.

    Every file is decoded once with PIL; unreadable ones are skipped and counted.
    """
    if not os.path.isdir(root):
        raise ValueError(
            f"Image folder {root!r} does not exist; expected a directory with one sub-folder "
            "per class (or train/ val/ test/ sub-folders, each with class sub-folders)."
        )
    top = _class_dirs(root)
    split_dirs = {}
    for split, names in _FOLDER_SPLIT_NAMES.items():
        for n in names:
            if n in top:
                split_dirs[split] = os.path.join(root, n)
                break
    if split_dirs and "train" not in split_dirs:
        raise ValueError(
            f"Image folder {root!r} has {sorted(split_dirs)} sub-folders but no train/; expected "
            "train/ (plus optional val/ and test/) or class sub-folders directly."
        )
    class_root = split_dirs.get("train", root)
    classes = _class_dirs(class_root)
    raw = {}
    if split_dirs:
        for split, d in split_dirs.items():
            raw[split] = _list_images(d, classes)
    else:
        raw["train"] = _list_images(root, classes)
    if not classes or not raw["train"][0]:
        raise ValueError(
            f"Image folder {class_root!r} holds no images: expected one sub-folder per class "
            f"containing {'/'.join(IMAGE_EXTENSIONS)} files (found {len(classes)} class folders)."
        )
    skipped, sides, grey, notices = 0, [], 0, []
    splits = {}
    for split, (paths, labels) in raw.items():
        keep_p, keep_l = [], []
        for p, lab, meta in zip(paths, labels, _check_images(paths)):
            if meta is None:
                skipped += 1
                continue
            keep_p.append(p)
            keep_l.append(lab)
            sides.append(max(meta[0], meta[1]))
            grey += meta[2] in ("L", "LA", "1", "I", "I;16", "F")
        splits[split] = (np.asarray(keep_p, dtype=object), np.asarray(keep_l, dtype=np.int32))
    if skipped:
        notices.append(f"folder {root!r}: skipped {skipped} corrupt or unreadable image(s).")
    if not len(splits["train"][0]):
        raise ValueError(
            f"Image folder {class_root!r}: all {len(raw['train'][0])} image files are corrupt "
            "or unreadable; expected at least one decodable JPEG/PNG image."
        )
    if "test" not in splits and "val" not in splits:
        # (A folder with val/ but no test/ keeps val/ whole: data.py serves it as "test".)
        # Stable hold-out by file-name hash (never by split seed: the test set must not move).
        paths, labels = splits["train"]
        rel = [os.path.relpath(p, class_root) for p in paths]
        is_test = np.array(
            [zlib.crc32(r.encode()) % 1000 < FOLDER_TEST_FRACTION * 1000 for r in rel], bool
        )
        if is_test.all() or not is_test.any():
            is_test = np.zeros(len(paths), bool)
            is_test[:: int(round(1 / FOLDER_TEST_FRACTION))] = True
        splits["test"] = (paths[is_test], labels[is_test])
        splits["train"] = (paths[~is_test], labels[~is_test])
        notices.append(
            f"folder {root!r} has no test/ sub-folder: held out {int(is_test.sum())} images "
            f"({FOLDER_TEST_FRACTION:.0%}, by file-name hash) as the test split."
        )
    return FileSource(
        name=f"folder:{root}",
        class_names=tuple(classes),
        splits=splits,
        channels=1 if grey == len(sides) else 3,
        flip=True,
        native_side=int(np.median(sides)),
        skipped_corrupt=skipped,
        notices=tuple(notices),
    )


# ---------------------------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------------------------

_NO_FLIP_TFDS = ("mnist", "emnist", "kmnist", "svhn_cropped")
_TFDS_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}


def load_tfds(name: str, data_dir: Optional[str], manual_dir: Optional[str]) -> TfdsSource:
    """Opens a TFDS builder, preparing it offline from ``manual_dir`` when needed."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names
        raise ValueError(
            f"Unknown or unavailable TFDS data set {name!r} (data_dir={data_dir!r}): {e}"
        ) from e
    if not builder.is_prepared():
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=download_config)
        except Exception as e:  # preparing can fail in many ways
            raise ValueError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir!r} and preparing "
                f"it failed (manual_dir={manual_dir!r}; nothing can be downloaded here): {e}. "
                "Expected a prepared data_dir, or the manually downloaded archives in "
                "--manual_dir (ImageNet-2012: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar)."
            ) from e
    features = builder.info.features
    image_key = label_key = None
    for key, feat in features.items():
        if image_key is None and isinstance(feat, tfds.features.Image):
            image_key = key
        if label_key is None and isinstance(feat, tfds.features.ClassLabel):
            label_key = key
    if image_key is None or label_key is None:
        raise ValueError(
            f"TFDS data set {name!r} has features {sorted(features.keys())}; expected one "
            "Image feature and one ClassLabel feature."
        )
    label_feat, image_feat = features[label_key], features[image_key]
    available = set(builder.info.splits.keys())
    split_names = {}
    for ours, theirs in _TFDS_SPLIT_NAMES.items():
        for t in theirs:
            # NOTE: under tfds.testing.mock_data without metadata, info.splits is empty and any
            # split name is accepted: fall back to the conventional names.
            if t in available or (not available and t == theirs[0] and ours != "val"):
                split_names[ours] = t
                break
    if "train" not in split_names:
        raise ValueError(
            f"TFDS data set {name!r} has splits {sorted(available)}; expected a 'train' split."
        )
    sizes = {}
    for ours, theirs in split_names.items():
        card = int(builder.as_dataset(split=theirs, shuffle_files=False).cardinality())
        if card < 0:
            card = int(builder.info.splits[theirs].num_examples)
        sizes[ours] = card
    if sizes["train"] == 0:
        raise ValueError(f"TFDS data set {name!r} has an empty train split.")
    shape = image_feat.shape
    side = max(shape[0], shape[1]) if shape[0] and shape[1] else None
    base = name.split("/")[0].split(":")[0]
    return TfdsSource(
        name=f"tfds:{name}",
        class_names=tuple(label_feat.names),
        builder=builder,
        split_names=split_names,
        sizes=sizes,
        image_key=image_key,
        label_key=label_key,
        channels=int(shape[-1] or 3),
        flip=base not in _NO_FLIP_TFDS,
        native_side=side,
    )

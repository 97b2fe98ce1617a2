"""Tests for elasticvit_tf.data: configs, splits, batches, augmentation, sharding."""

import dataclasses
import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf import data

MEAN = np.array(data.IMAGENET_MEAN, np.float32)
STD = np.array(data.IMAGENET_STD, np.float32)


def _write_idx(path, array):
    array = np.asarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _unique_images(n, offset, side=28):
    """Images whose first pixels encode their id (so every image is unique)."""
    rng = np.random.default_rng(offset)
    images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0] = ids % 256
    images[:, 0, 1] = ids // 256
    return images


@pytest.fixture()
def fashion_dir(tmp_path):
    folder = str(tmp_path / "fmnist")
    os.makedirs(folder)
    for n, off, im, lb, gz in (
        (200, 0, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", ".gz"),
        (50, 1000, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", ""),
    ):
        _write_idx(os.path.join(folder, im + gz), _unique_images(n, off))
        _write_idx(os.path.join(folder, lb + gz), np.arange(n) % 10)
    return folder


def _fashion_config(folder, **kw):
    kw.setdefault("search_size", 40)
    return data.DataConfig(dataset="fashion_mnist", data_dir=folder, **kw)


def _collect(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _hashes(images):
    return {hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images}


# --- config ----------------------------------------------------------------------------------


def test_config_round_trip_and_strict_from_dict():
    c = data.DataConfig(dataset="digits", image_size=16, search_size=100, max_train_examples=50)
    assert data.DataConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"Unknown DataConfig key\(s\) \['bogus'\]"):
        data.DataConfig.from_dict({**c.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"image_size": 2}, "image_size must be >= 4; received 2"),
        ({"val_fraction": 0.7}, r"val_fraction must be in \[0, 0.5\); received 0.7"),
        ({"search_size": -1}, "search_size must be an int >= 0; received -1"),
        ({"augment": "heavy"}, "augment must be one of .*received 'heavy'"),
        ({"max_train_examples": 0}, "max_train_examples must be None or an int >= 1; received 0"),
    ],
)
def test_config_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        data.DataConfig(dataset="digits", **kw)


def test_dataset_from_flag_forms():
    assert data.dataset_from_flag("fashion-mnist") == {"dataset": "fashion_mnist"}
    assert data.dataset_from_flag("digits") == {"dataset": "digits"}
    assert data.dataset_from_flag("tfds:imagenet2012") == {"dataset": "tfds:imagenet2012"}
    out = data.dataset_from_flag("folder:relative/imgs")
    assert out["dataset"] == "folder:" + os.path.abspath("relative/imgs")
    for bad in ("cifar", "tfds:", "folder:", "", "mnist"):
        with pytest.raises(ValueError, match=r"expected one of: fashion_mnist, digits, tfds:NAME"):
            data.dataset_from_flag(bad)
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        data.DataConfig(dataset="imagenet")


def test_fallback_to_digits_when_fashion_missing(tmp_path):
    missing = str(tmp_path / "nothing_here")
    config, notices = data.resolve_data_config(data.DataConfig(data_dir=missing))
    assert config.dataset == "digits" and config.data_dir is None
    assert len(notices) == 1
    assert "falling back to 'digits'" in notices[0] and missing in notices[0]
    with pytest.raises(ValueError, match=r"Fashion-MNIST not found in .*nothing_here"):
        data.resolve_data_config(data.DataConfig(data_dir=missing), fallback=False)
    with pytest.raises(ValueError, match="Fashion-MNIST not found"):
        data.get_info(data.DataConfig(data_dir=missing))


def test_resolve_makes_data_dir_explicit(fashion_dir):
    config, notices = data.resolve_data_config(data.DataConfig(data_dir=fashion_dir).to_dict())
    assert notices == [] and config.data_dir == os.path.abspath(fashion_dir)


# --- fashion_mnist (IDX fixture) ---------------------------------------------------------------


def test_fashion_fixture_batches_shape_and_normalisation(fashion_dir):
    config = _fashion_config(fashion_dir, image_size=28, augment="none")
    info = data.get_info(config)
    assert info.num_classes == 10 and info.channels_in == 1
    assert info.split_sizes == {"train": 160, "val": 0, "test": 50, "search": 40}
    x, y = next(iter(data.make_dataset(config, "test", 16)))
    assert x.shape == (16, 28, 28, 3) and x.dtype == tf.float32
    assert y.shape == (16,) and y.dtype == tf.int32
    raw = _unique_images(50, 1000)[:16]
    expected = (raw[..., None].astype(np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), np.arange(16) % 10)


def test_resize_to_image_size(fashion_dir):
    x, _ = next(iter(data.make_dataset(_fashion_config(fashion_dir, image_size=40), "test", 8)))
    assert x.shape == (8, 40, 40, 3)
    # Bilinear upsampling keeps values inside the normalised range of 0..255 pixels.
    assert x.numpy().min() >= (0 - MEAN.max()) / STD.min() - 1e-4
    assert x.numpy().max() <= (1 - MEAN.min()) / STD.min() + 1e-4


def test_splits_disjoint_and_reproducible(fashion_dir):
    kw = dict(image_size=28, augment="none", val_fraction=0.1, search_size=30)
    hashes = {}
    for split in data.SPLITS:
        x, _ = _collect(data.make_dataset(_fashion_config(fashion_dir, **kw), split, 64))
        hashes[split] = _hashes(x)
    sizes = {s: len(h) for s, h in hashes.items()}
    assert sizes == {"train": 150, "val": 20, "test": 50, "search": 30}
    for a in data.SPLITS:
        for b in data.SPLITS:
            if a < b:
                assert not hashes[a] & hashes[b], (a, b)
    # train + val + search is exactly the source's train set.
    train_all = _hashes((_unique_images(200, 0)[..., None].astype(np.float32) / 255.0 - MEAN) / STD)
    assert hashes["train"] | hashes["val"] | hashes["search"] == train_all
    # Same seed -> same carve; different seed -> different carve.
    again, _ = _collect(data.make_dataset(_fashion_config(fashion_dir, **kw), "search", 64))
    assert _hashes(again) == hashes["search"]
    other = _fashion_config(fashion_dir, split_seed=1, **kw)
    moved, _ = _collect(data.make_dataset(other, "search", 64))
    assert _hashes(moved) != hashes["search"] and len(_hashes(moved)) == 30


def test_data_cache_reads_a_source_once_and_is_bounded(fashion_dir, monkeypatch):
    reads = []
    real = data._read_source
    monkeypatch.setattr(data, "_read_source", lambda c: reads.append(c.dataset) or real(c))
    config = _fashion_config(fashion_dir, image_size=28, augment="none")
    cache = data.DataCache(max_sources=1)
    info = data.get_info(config, cache=cache)
    x, _ = _collect(data.make_dataset(config, "search", 64, cache=cache))
    _collect(data.make_dataset(dataclasses.replace(config, split_seed=1), "test", 64, cache=cache))
    assert reads == ["fashion_mnist"] and len(cache) == 1
    assert len(x) == info.split_sizes["search"]
    data.get_info(data.DataConfig(dataset="digits"), cache=cache)  # evicts fashion_mnist
    data.get_info(config, cache=cache)
    assert reads == ["fashion_mnist", "digits", "fashion_mnist"] and len(cache) == 1
    # Without a cache every call reads afresh (no module-level state).
    data.get_info(config)
    data.get_info(config)
    assert reads[3:] == ["fashion_mnist", "fashion_mnist"]
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_sources=0"):
        data.DataCache(max_sources=0)


def test_max_train_examples_caps_train_only(fashion_dir):
    info = data.get_info(_fashion_config(fashion_dir, max_train_examples=25))
    assert info.split_sizes["train"] == 25 and info.split_sizes["search"] == 40
    assert info.split_sizes["test"] == 50


def test_empty_val_split_is_clear_error(fashion_dir):
    with pytest.raises(ValueError, match="Split 'val' of fashion_mnist is empty; set val_fraction"):
        data.make_dataset(_fashion_config(fashion_dir), "val", 8)
    with pytest.raises(ValueError, match="split must be one of"):
        data.make_dataset(_fashion_config(fashion_dir), "validation", 8)
    with pytest.raises(ValueError, match="batch_size must be a positive int; received 0"):
        data.make_dataset(_fashion_config(fashion_dir), "test", 0)


def test_training_augmentation_is_seeded(fashion_dir):
    config = _fashion_config(fashion_dir, image_size=28)

    def first(seed):
        ds = data.make_dataset(config, "train", 32, training=True, repeat=True, seed=seed)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(3)]

    a, b, c = first(7), first(7), first(8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])
    assert a[0][0].shape == (32, 28, 28, 3)
    # Augmented images differ from the plain ones (shift/flip), yet stay in range.
    plain = _hashes(_collect(data.make_dataset(config, "train", 64))[0])
    assert len(_hashes(a[0][0]) & plain) < 32


def test_light_augmentation_is_shift_and_flip(fashion_dir):
    """Every augmented image is its source image shifted by <= pad pixels, maybe mirrored."""
    config = _fashion_config(fashion_dir, image_size=28, search_size=0)
    ds = data.make_dataset(config, "train", 200, training=True, seed=3, drop_remainder=False)
    x, y = next(iter(ds))
    raw = ((x.numpy() * STD + MEAN) * 255.0)[..., 0]
    src = _unique_images(200, 0).astype(np.float32)
    pad = 4  # round(28 / 8)
    padded = {
        f: np.pad(src[:, :, ::-1] if f else src, ((0, 0), (pad, pad), (pad, pad))) for f in (0, 1)
    }
    shifts, flips = set(), set()
    for img, label in zip(raw[:30], y.numpy()[:30]):
        hits = [
            (f, dy, dx, i)
            for f in (0, 1)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for i in np.flatnonzero(
                np.abs(padded[f][:, dy : dy + 28, dx : dx + 28] - img).max(axis=(1, 2)) < 1e-2
            )
        ]
        assert hits, "augmented image is not a shifted/flipped source image"
        f, dy, dx, i = hits[0]
        assert i % 10 == label
        shifts.add((dy, dx))
        flips.add(f)
    assert flips == {0, 1} and len(shifts) > 5


def test_shuffle_covers_epoch_and_repeat(fashion_dir):
    config = _fashion_config(fashion_dir, image_size=8, search_size=0)
    ds = data.make_dataset(config, "train", 50, shuffle=True, repeat=True, seed=0)
    batches = [y.numpy() for _, y in ds.take(8)]  # two epochs of 200
    assert all(len(b) == 50 for b in batches)
    epoch1 = np.sort(np.concatenate(batches[:4]))
    np.testing.assert_array_equal(epoch1, np.sort(np.arange(200) % 10))
    assert not np.array_equal(np.concatenate(batches[:4]), np.concatenate(batches[4:]))


def test_sharding_with_input_context(fashion_dir):
    config = _fashion_config(fashion_dir, image_size=28, augment="none")
    full, _ = _collect(data.make_dataset(config, "test", 10))
    shards = []
    for i in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2
        )
        ds = data.make_dataset(config, "test", 10, input_context=ctx)
        x, _ = _collect(ds)
        assert next(iter(ds))[0].shape[0] == 5  # per-replica batch = 10 / 2
        shards.append(_hashes(x))
    assert len(shards[0]) == len(shards[1]) == 25
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == _hashes(full)


def test_distribute_dataset_default_strategy(fashion_dir):
    strategy = tf.distribute.get_strategy()
    dist = data.distribute_dataset(strategy, _fashion_config(fashion_dir), "test", 10)
    x, y = next(iter(dist))
    assert x.shape == (10, 32, 32, 3) and y.shape == (10,)


def test_imagenet_mode_on_arrays(fashion_dir):
    config = _fashion_config(fashion_dir, image_size=24, augment="imagenet")
    x, _ = next(iter(data.make_dataset(config, "train", 16, training=True, seed=0)))
    assert x.shape == (16, 24, 24, 3) and np.isfinite(x.numpy()).all()
    # Eval: centre crop 0.875 of the shorter side, resized to S (identity size 28*0.875 = 24.5).
    xe, _ = next(iter(data.make_dataset(config, "test", 4)))
    assert xe.shape == (4, 24, 24, 3)


# --- digits ----------------------------------------------------------------------------------


def test_digits_shapes_classes_normalisation():
    config = data.DataConfig(dataset="digits", search_size=100)
    info = data.get_info(config)
    assert info.name == "digits" and info.num_classes == 10
    assert info.split_sizes["train"] + info.split_sizes["search"] == 1438
    assert info.split_sizes["search"] == 100 and info.split_sizes["test"] == 359
    x, y = _collect(data.make_dataset(config, "test", 128))
    assert x.shape == (359, 32, 32, 3) and y.shape == (359,)
    assert set(np.unique(y)) == set(range(10))
    np.testing.assert_allclose(x.min(axis=(0, 1, 2)), (0 - MEAN) / STD, atol=1e-4)
    np.testing.assert_allclose(x.max(axis=(0, 1, 2)), (1 - MEAN) / STD, atol=1e-4)
    # Grey tiled to 3 channels: undo the per-channel normalisation -> equal channels.
    raw = x * STD + MEAN
    np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-5)


def test_digits_search_size_clamped_with_notice_only_when_chosen():
    info = data.get_info(data.DataConfig(dataset="digits"))
    assert info.split_sizes["search"] == 359
    assert not any("too large" in n for n in info.notices)  # the default is only a cap
    info = data.get_info(data.DataConfig(dataset="digits", search_size=1000))
    assert info.split_sizes["search"] == 359
    assert any("search_size=1000 is too large" in n for n in info.notices)


# --- folder ----------------------------------------------------------------------------------


def _make_folder(root, sizes=((20, 30), (16, 16), (40, 24)), per_class=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    for ci, cls in enumerate(("ant", "bee", "cow")):
        os.makedirs(os.path.join(root, cls))
        for i in range(per_class):
            h, w = sizes[(ci + i) % len(sizes)]
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(arr).save(os.path.join(root, cls, f"{i}{ext}"))
    with open(os.path.join(root, "bee", "corrupt.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.mark.parametrize("augment", ["auto", "imagenet", "light"])
def test_folder_batches_skip_corrupt(tmp_path, augment):
    root = _make_folder(str(tmp_path / "f"))
    config = data.DataConfig(dataset=f"folder:{root}", search_size=2, augment=augment)
    info = data.get_info(config)
    assert info.skipped_corrupt == 1 and info.num_classes == 3
    assert info.class_names == ("ant", "bee", "cow")
    assert sum(info.split_sizes.values()) == 15
    x, y = _collect(data.make_dataset(config, "train", 4, training=True, seed=0))
    assert x.shape[1:] == (32, 32, 3) and x.shape[0] == (info.split_sizes["train"] // 4) * 4
    assert np.isfinite(x).all() and y.dtype == np.int32
    xt, yt = _collect(data.make_dataset(config, "test", 4))
    assert xt.shape == (info.split_sizes["test"], 32, 32, 3)
    assert xt.min() >= (0 - MEAN.max()) / STD.min() - 1e-4


def test_folder_empty_is_clear_error(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    config = data.DataConfig(dataset=f"folder:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match=r"holds no images: expected one sub-folder per class"):
        data.get_info(config)


# --- tfds (mocked) ---------------------------------------------------------------------------


def test_tfds_mock_batches():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        config = data.DataConfig(dataset="tfds:mnist", search_size=8, val_fraction=0.1)
        info = data.get_info(config)
        assert info.num_classes == 10 and info.channels_in == 1
        assert info.split_sizes == {"train": 28, "val": 4, "test": 40, "search": 8}
        x, y = _collect(data.make_dataset(config, "train", 8, training=True, seed=1))
        assert x.shape == (24, 32, 32, 3) and y.shape == (24,)
        xs, _ = _collect(data.make_dataset(config, "search", 8))
        assert xs.shape == (8, 32, 32, 3)
        ctx = tf.distribute.InputContext(2, 1, 2)
        xv, _ = _collect(data.make_dataset(config, "val", 4, input_context=ctx))
        assert xv.shape == (2, 32, 32, 3)


def test_tfds_imagenet2012_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        config = data.DataConfig(dataset="tfds:imagenet2012", search_size=1, image_size=48)
        info = data.get_info(config)
        assert info.num_classes == 1000 and info.channels_in == 3
        x, _ = _collect(data.make_dataset(config, "train", 2, training=True, seed=0))
        assert x.shape == (4, 48, 48, 3)


# --- the real Debian Fashion-MNIST -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_smoke():
    config, notices = data.resolve_data_config(data.DataConfig())
    assert config.dataset == "fashion_mnist" and notices == []
    info = data.get_info(config)
    assert info.split_sizes == {"train": 55000, "val": 0, "test": 10000, "search": 5000}
    ds = data.make_dataset(config, "train", 256, training=True, repeat=True, seed=0)
    for x, y in ds.take(5):
        assert x.shape == (256, 32, 32, 3)
        assert set(np.unique(y.numpy())) <= set(range(10))
    _, yt = _collect(data.make_dataset(config, "test", 1000))
    np.testing.assert_array_equal(np.bincount(yt), np.full(10, 1000))
    assert dataclasses.asdict(config)["data_dir"] == "/usr/share/datasets/fashion-mnist"


_MIRRORED_SCRIPT = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from elasticvit_tf import data
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
config = data.DataConfig(dataset="digits", search_size=50)
dist = data.distribute_dataset(strategy, config, "train", 16, training=True, seed=0)
x, y = next(iter(dist))
xs = strategy.experimental_local_results(x)
ys = strategy.experimental_local_results(y)
print("SHAPES", [tuple(t.shape) for t in xs], [tuple(t.shape) for t in ys])
"""


@pytest.mark.slow
def test_distribute_dataset_mirrored_two_cpus():
    """Two logical CPU replicas each get a per-replica batch of global / 2 (in a subprocess:
    logical devices must be configured before TensorFlow initialises)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SHAPES [(8, 32, 32, 3), (8, 32, 32, 3)] [(8,), (8,)]" in out.stdout

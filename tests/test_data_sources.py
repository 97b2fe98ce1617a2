"""Tests for elasticvit_tf.data_sources: IDX parsing, digits, image folders, TFDS (mocked)."""

import gzip
import os
import struct

import numpy as np
import pytest

from elasticvit_tf import data_sources as sources


def write_idx(path, array):
    """Writes ``array`` (uint8) as an IDX file; ``.gz`` suffix means gzip."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fashion_fixture(folder, n_train=40, n_test=10, gz=True, side=28):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    out = {}
    for split, n, images_stem, labels_stem in (
        ("train", n_train, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("test", n_test, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(os.path.join(folder, images_stem + suffix), images)
        write_idx(os.path.join(folder, labels_stem + suffix), labels)
        out[split] = (images, labels)
    return out


def write_png(path, array):
    from PIL import Image

    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def make_image_folder(root, classes=("cat", "dog", "eel"), per_class=6, side=12, corrupt=1):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            write_png(os.path.join(root, c, f"{c}_{i}.png"), rng.integers(0, 256, (side, side, 3)))
    for i in range(corrupt):
        with open(os.path.join(root, classes[0], f"broken_{i}.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / ("a.idx" + (".gz" if gz else "")))
    write_idx(path, array)
    out = sources.read_idx(path, expected_ndim=3)
    np.testing.assert_array_equal(out, array)
    assert out.shape == (2, 3, 4)


def test_read_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*bad magic number 0x12340803"):
        sources.read_idx(str(path))


def test_read_idx_truncated_names_file(tmp_path):
    path = str(tmp_path / "t10k-labels-idx1-ubyte.gz")
    write_idx(path, np.zeros(10, np.uint8))
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-3])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated.*\(10,\)"):
        sources.read_idx(path)


def test_read_idx_wrong_ndim_and_bad_gzip(tmp_path):
    path = str(tmp_path / "x-idx1")
    write_idx(path, np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="declares 2 dimensions; expected 1"):
        sources.read_idx(path, expected_ndim=1)
    bad = tmp_path / "y.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"Could not read IDX file .*y\.gz"):
        sources.read_idx(str(bad))


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_fixture(tmp_path, gz):
    ref = write_fashion_fixture(str(tmp_path), gz=gz)
    src = sources.load_fashion_mnist(str(tmp_path))
    x, y = src.splits["train"]
    assert x.shape == (40, 28, 28, 1) and x.dtype == np.uint8
    assert y.dtype == np.int32 and y.shape == (40,)
    np.testing.assert_array_equal(x[..., 0], ref["train"][0])
    np.testing.assert_array_equal(src.splits["test"][1], ref["test"][1])
    assert src.channels == 1 and src.flip and len(src.class_names) == 10


def test_load_fashion_mnist_missing_and_mismatched(tmp_path):
    with pytest.raises(ValueError, match=r"not found in .*missing train-images-idx3-ubyte\[\.gz\]"):
        sources.load_fashion_mnist(str(tmp_path))
    write_fashion_fixture(str(tmp_path), gz=False)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(39, np.uint8))
    with pytest.raises(ValueError, match="holds 40 images but .*train-labels-idx1-ubyte.* 39"):
        sources.load_fashion_mnist(str(tmp_path))


def test_digits_source():
    src = sources.load_digits_source()
    xtr, ytr = src.splits["train"]
    xte, yte = src.splits["test"]
    assert len(ytr) + len(yte) == 1797
    assert xtr.shape[1:] == (8, 8, 1) and xtr.dtype == np.uint8
    assert xtr.max() == 255 and xtr.min() == 0
    assert set(np.unique(yte)) == set(range(10))
    assert 350 <= len(yte) <= 370  # stratified 20 %
    assert not src.flip


def test_folder_skips_and_counts_corrupt(tmp_path):
    root = make_image_folder(str(tmp_path / "imgs"), per_class=10, corrupt=2)
    src = sources.load_folder(root)
    assert src.skipped_corrupt == 2
    assert src.class_names == ("cat", "dog", "eel")
    total = sum(len(src.splits[s][1]) for s in src.splits)
    assert total == 30
    assert set(src.splits) == {"train", "test"}
    assert len(src.splits["test"][1]) > 0 and len(src.splits["train"][1]) > 0
    assert not any("broken" in p for s in src.splits for p in src.splits[s][0])
    assert any("skipped 2 corrupt" in n for n in src.notices)
    assert src.native_side == 12 and src.channels == 3


def test_folder_with_split_subfolders(tmp_path):
    root = tmp_path / "ds"
    make_image_folder(str(root / "train"), per_class=3, corrupt=0)
    make_image_folder(str(root / "val"), per_class=2, corrupt=1)
    src = sources.load_folder(str(root))
    assert set(src.splits) == {"train", "val"}
    assert len(src.splits["train"][1]) == 9
    assert len(src.splits["val"][1]) == 6
    assert src.skipped_corrupt == 1


def test_folder_empty_and_missing_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist; expected a directory"):
        sources.load_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.* holds no images: expected one sub-folder"):
        sources.load_folder(str(tmp_path / "empty"))
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        sources.load_folder(str(tmp_path / "empty"))
    bad = tmp_path / "allbad" / "cls"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="all 1 image files are corrupt"):
        sources.load_folder(str(tmp_path / "allbad"))


def test_tfds_mocked_mnist():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        src = sources.load_tfds("mnist", None, None)
        assert src.sizes["train"] == 12 and src.sizes["test"] == 12
        assert src.class_names == tuple(str(i) for i in range(10))
        assert src.channels == 1 and src.native_side == 28 and not src.flip
        encoded, label = next(iter(src.as_dataset("train")))
        image = src.decode(encoded)
        assert image.shape == (28, 28, 1) and label.dtype.name == "int32"


def test_tfds_unknown_name():
    with pytest.raises(
        ValueError, match="Unknown or unavailable TFDS data set 'no_such_dataset_x'"
    ):
        sources.load_tfds("no_such_dataset_x", None, None)


def test_folder_truncated_jpeg_skipped_threaded_scan(tmp_path):
    """A JPEG cut in half passes the header check but is caught by the (threaded) scan."""
    import io

    from PIL import Image

    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(40):  # 80 files: the threaded path
            arr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(str(root / c / f"{i}.jpg"), quality=90)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "b" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    src = sources.load_folder(str(root))
    assert src.skipped_corrupt == 1
    assert sum(len(v[1]) for v in src.splits.values()) == 80
    assert src.native_side == 64 and src.channels == 3


def test_tfds_imagenet_unprepared_without_archives_is_clear_error(tmp_path):
    """Preparing imagenet2012 offline needs the archives in manual_dir (checked before any
    download is attempted)."""
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(
        ValueError, match=r"'imagenet2012' is not prepared in .*manual_dir=.*manual"
    ):
        sources.load_tfds("imagenet2012", str(tmp_path / "tfds"), str(manual))

"""CIFAR-10 readers on tiny data made here: official pickle format, image folders and tars."""
from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from ckksnet.data import CLASSES, find_data, load_cifar10
from ckksnet.errors import DataError

RNG = np.random.default_rng(0)


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist()}


def _official_tree(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = _batch(3, 99)
    for name, b in batches.items():
        (folder / name).write_bytes(pickle.dumps(b))
    return folder, batches


def test_official_directory_and_archive(tmp_path):
    folder, batches = _official_tree(tmp_path)
    test = load_cifar10("test", folder, use_cache=False)
    want = batches["test_batch"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert test.images.shape == (3, 32, 32, 3) and np.array_equal(test.images, want)
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    train = load_cifar10("train", folder, use_cache=False)
    assert len(train) == 20 and train.classes == CLASSES
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    from_tar = load_cifar10("test", archive, use_cache=False)
    assert np.array_equal(from_tar.images, test.images)
    # a folder holding the archive is found too
    assert np.array_equal(load_cifar10("test", tmp_path, use_cache=False).images, test.images)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _image_tree(root, classes=("cat", "dog"), per_class=3):
    images = {}
    for c in classes:
        (root / "test" / c).mkdir(parents=True)
        for i in range(per_class):
            arr = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            (root / "test" / c / f"{i:04d}.png").write_bytes(_png(arr))
            images[(c, i)] = arr
    return images


def test_image_folder_and_tar(tmp_path):
    images = _image_tree(tmp_path / "set")
    split = load_cifar10("test", tmp_path / "set", use_cache=False)
    assert split.classes == ("cat", "dog") and split.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(split.images[4], images[("dog", 1)])  # PNG is lossless
    tar_path = tmp_path / "set.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "set" / "test", arcname="test")
    from_tar = load_cifar10("test", tar_path, use_cache=False)
    assert np.array_equal(from_tar.images, split.images) and np.array_equal(from_tar.labels, split.labels)


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("CKKSNET_CACHE", str(tmp_path / "cache"))
    _image_tree(tmp_path / "set")
    first = load_cifar10("test", tmp_path / "set")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_cifar10("test", tmp_path / "set")
    assert np.array_equal(first.images, again.images) and again.classes == first.classes


def test_foolbox_images_have_official_labels():
    split = load_cifar10("test", "foolbox")
    # labels of the first 20 official CIFAR-10 test images
    assert split.labels.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    assert split.images.shape == (20, 32, 32, 3) and split.images.dtype == np.uint8


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10("test", tmp_path / "nowhere", use_cache=False)


def test_env_variable_and_missing_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CKKSNET_DATA", str(tmp_path / "from-env"))
    assert find_data() == tmp_path / "from-env"


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_cifar10("test", bad, use_cache=False)


def test_corrupt_image(tmp_path):
    _image_tree(tmp_path / "set", per_class=1)
    (tmp_path / "set" / "test" / "cat" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_cifar10("test", tmp_path / "set", use_cache=False)


def test_folder_without_images(tmp_path):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_cifar10("test", tmp_path / "empty", use_cache=False)


def test_bad_split(tmp_path):
    with pytest.raises(DataError, match="split"):
        load_cifar10("valid", tmp_path)

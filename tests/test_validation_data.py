"""Damaged data files and checkpoints, made here in a tmp dir: each gives its specific error.

Truncation at several points, single-byte flips, wrong types and values: a DataError (or its
ChecksumError) naming the file every time, never a bare exception or a silently changed result;
and good files still load identically.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ckksnet.data import CLASSES, load_cifar10
from ckksnet.errors import ChecksumError, CorruptDataError, DataError, UnverifiedCheckpointWarning
from ckksnet.models import load_bundled, load_checkpoint, save_checkpoint
from ckksnet.models.checkpoint import add_checksum
from ckksnet.models.resnet import ResNetCifar
from ckksnet.compiler.calibrate import calibrate
from ckksnet.training.export import load_run_state

JPEG_COPY = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [b"x.png"] * n}


def _official_dir(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(4, i), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(_batch(3, 99), protocol=2))
    return folder


def _tar(folder: Path, target: Path, arcname: str) -> Path:
    with tarfile.open(target, "w:gz" if target.suffix == ".gz" else "w") as tar:
        tar.add(folder, arcname=arcname)
    return target


def _raises(error: type, fn, *args, path: Path | None = None, text: str = "") -> BaseException:
    """``fn(*args)`` raises ``error`` exactly, naming ``path`` and ``text`` in its message."""
    with pytest.raises(DataError) as info:
        fn(*args)
    assert info.type is error, f"{info.type.__name__}: {info.value}"
    if path is not None:
        assert str(path) in str(info.value)
    assert text in str(info.value)
    return info.value


def _load_test(path: Path):
    return load_cifar10("test", path, use_cache=False)


def _error_or_identical(path: Path, good) -> bool:
    """True if loading ``path`` fails with a DataError naming it; else the result must equal ``good``."""
    try:
        split = _load_test(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return True
    assert np.array_equal(split.images, good.images) and np.array_equal(split.labels, good.labels)
    return False


# ---------------------------------------------------------------- official pickles
def _bad_batches():
    good = _batch(3, 99)
    data_float = {**good, b"data": good[b"data"].astype(np.float64)}
    data_float32 = {**good, b"data": good[b"data"].astype(np.float32)}
    return [  # (id, object to pickle, text in the message)
        ("not a dict", [good[b"data"], good[b"labels"]], "expected a dict"),
        ("no labels key", {b"data": good[b"data"]}, "b'labels'"),
        ("no data key", {b"labels": good[b"labels"]}, "b'data'"),
        ("float64 pixels", data_float, "dtype float64"),
        ("float32 pixels 0..255", data_float32, "dtype float32"),
        ("int64 pixels", {**good, b"data": good[b"data"].astype(np.int64)}, "dtype int64"),
        ("pixels a list", {**good, b"data": good[b"data"].tolist()}, "numpy array"),
        ("wrong row length", {**good, b"data": good[b"data"][:, :3071]}, "(N, 3072)"),
        ("1-D pixels", {**good, b"data": good[b"data"].ravel()}, "(N, 3072)"),
        ("no images", {**good, b"data": good[b"data"][:0], b"labels": []}, "(N, 3072)"),
        ("fewer labels", {**good, b"labels": good[b"labels"][:2]}, "2 labels for 3 images"),
        ("more labels", {**good, b"labels": good[b"labels"] + [1]}, "4 labels for 3 images"),
        ("label 10", {**good, b"labels": [1, 10, 2]}, "label 10 at index 1 is outside 0..9"),
        ("label -1", {**good, b"labels": [-1, 1, 2]}, "outside 0..9"),
        ("float labels", {**good, b"labels": [1.0, 2.0, 3.0]}, "integers"),
        ("bool labels", {**good, b"labels": [True, False, True]}, "integers"),
        ("labels a string", {**good, b"labels": "123"}, "integers"),
        ("2-D label array", {**good, b"labels": np.array([[1, 2, 3]])}, "integers"),
    ]


@pytest.mark.parametrize("obj, text", [b[1:] for b in _bad_batches()], ids=[b[0] for b in _bad_batches()])
def test_official_batch_contents(tmp_path, obj, text):
    folder = _official_dir(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(obj, protocol=2))
    _raises(DataError, _load_test, folder, path=folder / "test_batch", text=text)


def test_official_batch_with_str_keys_and_label_array_loads(tmp_path):
    folder = _official_dir(tmp_path)
    good = _batch(3, 99)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {"data": good[b"data"], "labels": np.array(good[b"labels"], dtype=np.uint8)}))
    split = _load_test(folder)
    assert split.labels.tolist() == good[b"labels"] and split.labels.dtype == np.int64


@pytest.mark.parametrize("cut", [0, 1, 20, 0.5, -1])
def test_truncated_pickle(tmp_path, cut):
    folder = _official_dir(tmp_path)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    _raises(DataError, _load_test, folder, path=folder / "test_batch", text="not a readable pickle")


def test_trailing_bytes_after_pickle(tmp_path):
    folder = _official_dir(tmp_path)
    with open(folder / "test_batch", "ab") as fh:
        fh.write(b"\x00junk")
    _raises(DataError, _load_test, folder, path=folder / "test_batch", text="5 unexpected byte(s)")


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.remove, (self.target,))


def test_pickle_cannot_run_code(tmp_path):
    folder = _official_dir(tmp_path)
    sentinel = tmp_path / "keep-me"
    sentinel.write_text("x")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(str(sentinel)), b"labels": []}))
    _raises(DataError, _load_test, folder, path=folder / "test_batch", text="refuses to load")
    assert sentinel.exists()


# ---------------------------------------------------------------- archives
@pytest.fixture
def official_targz(tmp_path):
    folder = _official_dir(tmp_path / "src")
    archive = _tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    return archive, _load_test(folder)


def test_official_archive_loads_identically(official_targz):
    archive, good = official_targz
    split = _load_test(archive)
    assert np.array_equal(split.images, good.images) and np.array_equal(split.labels, good.labels)


@pytest.mark.parametrize("cut", [0, 5, 10, 0.3, 0.6, 0.95, -9, -8, -4, -1])
def test_truncated_targz(official_targz, cut):
    archive, _ = official_targz
    data = archive.read_bytes()
    archive.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    _raises(DataError, _load_test, archive, path=archive)


def test_byte_flips_in_targz(official_targz):
    """A flip anywhere past the gzip header's descriptive fields is an error, or changes nothing."""
    archive, good = official_targz
    data = archive.read_bytes()
    positions = sorted(set(np.linspace(10, len(data) - 9, 40).astype(int).tolist()) | {0, 1, 2})
    errors = 0
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x04
        archive.write_bytes(bytes(damaged))
        errors += _error_or_identical(archive, good)
    assert errors >= len(positions) - 2  # only a flip in deflate's padding bits may go unseen


@pytest.mark.parametrize("offset", [-8, -6, -4, -1])  # CRC-32, then the uncompressed length
def test_gzip_trailer_flip_is_a_checksum_error(official_targz, offset):
    archive, _ = official_targz
    damaged = bytearray(archive.read_bytes())
    damaged[offset] ^= 0x01
    archive.write_bytes(bytes(damaged))
    exc = _raises(ChecksumError, _load_test, archive, path=archive, text="gzip check failed")
    assert isinstance(exc, CorruptDataError)


def _png(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, format="PNG")
    return buf.getvalue()


def _image_tree(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (root / "test" / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            (root / "test" / c / f"{i:04d}.png").write_bytes(_png(pixels))
    return root


@pytest.fixture
def image_tar(tmp_path):
    root = _image_tree(tmp_path / "set")
    archive = _tar(root / "test", tmp_path / "set.tar", "test")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    end = members[-1].offset_data + -(-members[-1].size // 512) * 512
    return archive, _load_test(root), members, end


def test_image_tar_loads_identically(image_tar):
    archive, good, _, _ = image_tar
    split = _load_test(archive)
    assert np.array_equal(split.images, good.images) and split.classes == good.classes


@pytest.mark.parametrize("where", ["mid-data", "at-header", "mid-header", "no-marker", "one-zero-block",
                                   "last-data"])
def test_truncated_plain_tar(image_tar, where):
    archive, _, members, end = image_tar
    second = members[1]
    cut = {"mid-data": second.offset_data + 100, "at-header": second.offset,
           "mid-header": second.offset + 100, "no-marker": end, "one-zero-block": end + 512,
           "last-data": end - 300}[where]
    archive.write_bytes(archive.read_bytes()[:cut])
    _raises(DataError, _load_test, archive, path=archive)


def test_plain_tar_without_record_padding_loads(image_tar):
    archive, good, _, end = image_tar
    archive.write_bytes(archive.read_bytes()[:end + 1024])  # both zero blocks kept: nothing lost
    assert not _error_or_identical(archive, good)


@pytest.mark.parametrize("field", [5, 100, 124, 150])  # name, mode, size, checksum of a header
def test_flip_in_plain_tar_header(image_tar, field):
    archive, _, members, _ = image_tar
    damaged = bytearray(archive.read_bytes())
    damaged[members[2].offset + field] ^= 0x01
    archive.write_bytes(bytes(damaged))
    _raises(DataError, _load_test, archive, path=archive)


def test_duplicate_member(tmp_path):
    root = _image_tree(tmp_path / "set")
    archive = tmp_path / "dup.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "test", arcname="test")
        tar.add(root / "test" / "cat" / "0000.png", arcname="test/cat/0000.png")
    _raises(DataError, _load_test, archive, path=archive, text="appears twice")


def test_image_targz_flips(tmp_path):
    root = _image_tree(tmp_path / "set")
    archive = _tar(root / "test", tmp_path / "set.tar.gz", "test")
    good, data = _load_test(root), archive.read_bytes()
    for pos in np.linspace(10, len(data) - 1, 25).astype(int):
        damaged = bytearray(data)
        damaged[pos] ^= 0x80
        archive.write_bytes(bytes(damaged))
        _error_or_identical(archive, good)


# ---------------------------------------------------------------- image files
def _image_cases():
    rgb = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((32, 32), 128, np.uint8)])
    wide = np.zeros((32, 40, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(buf, format="PNG")
    return [  # (id, bytes of cat/0000.png, text in the message)
        ("garbage", b"not a png", "not a readable image"),
        ("empty", b"", "not a readable image"),
        ("cut in half", _png(rgb)[:200], "not a readable image"),
        ("transparent", _png(rgba), "transparent"),
        ("16-bit", buf.getvalue(), "mode"),
        ("another size", _png(wide), "40x32 pixels, expected 32x32"),
    ]


@pytest.mark.parametrize("data, text", [c[1:] for c in _image_cases()], ids=[c[0] for c in _image_cases()])
def test_bad_image_file(tmp_path, data, text):
    root = _image_tree(tmp_path / "set")
    (root / "test" / "cat" / "0000.png").write_bytes(data)
    _raises(DataError, _load_test, root, path=root, text=text)


def test_exact_conversions_are_accepted(tmp_path):
    root = _image_tree(tmp_path / "set")
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    rgb = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (root / "test" / "cat" / "0000.png").write_bytes(_png(gray))
    (root / "test" / "cat" / "0001.png").write_bytes(_png(np.dstack([rgb, np.full((32, 32), 255, np.uint8)])))
    split = _load_test(root)
    assert np.array_equal(split.images[0], np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(split.images[1], rgb)


# ---------------------------------------------------------------- the cache
@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "labels out of range"])
def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("CKKSNET_CACHE", str(tmp_path / "cache"))
    root = _image_tree(tmp_path / "set")
    first = load_cifar10("test", root)
    (cached,) = (tmp_path / "cache").glob("*.npz")
    data = cached.read_bytes()
    if damage == "garbage":
        cached.write_bytes(b"PK\x03\x04 garbage")
    elif damage == "truncated":
        cached.write_bytes(data[:len(data) // 2])
    elif damage == "flipped":
        damaged = bytearray(data)
        damaged[data.index(first.images.tobytes()[:64]) + 10] ^= 0x01
        cached.write_bytes(bytes(damaged))
    else:
        np.savez(cached, images=first.images, labels=first.labels + 5, classes=np.array(first.classes),
                 source=np.array(first.source))
    again = load_cifar10("test", root)
    assert np.array_equal(again.images, first.images) and np.array_equal(again.labels, first.labels)
    assert np.array_equal(load_cifar10("test", root).labels, first.labels)


@pytest.mark.skipif(not JPEG_COPY.exists(), reason="the JPEG copy of CIFAR-10 is not at ../shared/data")
def test_jpeg_copy_still_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("CKKSNET_CACHE", str(tmp_path / "cache"))
    split = load_cifar10("test", JPEG_COPY)
    assert split.images.shape == (10000, 32, 32, 3) and split.classes == CLASSES
    assert np.bincount(split.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------- checkpoints
def _model(seed: int = 0) -> ResNetCifar:
    torch.manual_seed(seed)
    model = ResNetCifar(1, (4, 8, 8), 10).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean") or name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def _saved(tmp_path_factory):
    model = _model()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    meta = {"note": "test", "calibration": {"images": 4, "split": "train", "relus": calibrate(model, images)}}
    return save_checkpoint(model, meta, tmp_path_factory.mktemp("saved") / "ck"), model


@pytest.fixture
def ck(_saved, tmp_path):
    """A fresh copy of a small checkpoint (with checksum) and the model it holds."""
    folder, model = _saved
    return Path(shutil.copytree(folder, tmp_path / "ck")), model


def _same(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    a, b = model.state_dict(), other.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _load_quiet(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedCheckpointWarning)
        return load_checkpoint(folder)


def test_checkpoint_round_trip_is_verified(ck):
    folder, model = ck
    loaded, meta = _load_quiet(folder)
    assert _same(loaded, model) and meta["note"] == "test"
    assert set(meta["checksum"]) == {"algorithm", "tensors", "config", "calibration"}


def test_bundled_checkpoint_is_verified():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedCheckpointWarning)
        model, meta = load_bundled()
    assert meta["checksum"]["algorithm"] == "sha256" and meta["config"]["widths"] == [16, 32, 64]


@pytest.mark.parametrize("cut", [0, 1, 30, 0.25, 0.5, 0.9, -100, -22, -1])
def test_truncated_model_pt(ck, cut):
    folder, _ = ck
    pt = folder / "model.pt"
    data = pt.read_bytes()
    pt.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    _raises(DataError, load_checkpoint, folder, path=pt, text="not a readable torch state dict")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("content", [b"garbage" * 100, pickle.dumps([1, 2]), b"\x80\x02}q\x00."])
def test_garbled_model_pt(ck, content):
    folder, _ = ck
    (folder / "model.pt").write_bytes(content)
    _raises(DataError, load_checkpoint, folder, path=folder / "model.pt")


def test_model_pt_of_another_type(ck):
    folder, _ = ck
    torch.save([torch.zeros(3)], folder / "model.pt")
    _raises(DataError, load_checkpoint, folder, path=folder / "model.pt",
            text="expected a dict of named tensors")


@pytest.mark.parametrize("tensor", ["conv1.weight", "fc.weight", "layers.1.bn2.running_var", "fc.bias"])
def test_flipped_bit_in_weights_is_a_checksum_error(ck, tensor):
    folder, model = ck
    pt = folder / "model.pt"
    data = bytearray(pt.read_bytes())
    raw = model.state_dict()[tensor].numpy().tobytes()
    at = bytes(data).index(raw)
    data[at + len(raw) // 2] ^= 0x01
    pt.write_bytes(bytes(data))
    exc = _raises(ChecksumError, load_checkpoint, folder, path=folder, text="weights (model.pt)")
    assert isinstance(exc, CorruptDataError)


def test_byte_flips_anywhere_in_model_pt(ck):
    folder, model = ck
    pt = folder / "model.pt"
    data = pt.read_bytes()
    for pos in np.linspace(0, len(data) - 1, 60).astype(int):
        damaged = bytearray(data)
        damaged[pos] ^= 0x20
        pt.write_bytes(bytes(damaged))
        try:
            loaded, _ = _load_quiet(folder)
        except DataError as exc:
            assert str(folder) in str(exc)
        else:  # a flip in zip bookkeeping that changes no tensor is harmless
            assert _same(loaded, model)


def test_other_weights_of_the_same_shape(ck):
    folder, _ = ck
    torch.save(_model(seed=1).state_dict(), folder / "model.pt")
    _raises(ChecksumError, load_checkpoint, folder, path=folder)


def _edit_meta(folder: Path, edit) -> None:
    path = folder / "model.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


def _setter(*keys_and_value):
    *keys, value = keys_and_value

    def edit(meta):
        node = meta
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return edit


_DELETE = object()
META_CASES = [  # (id, edit, text naming the field)
    ("no config", _setter("config", _DELETE), "config must be an object"),
    ("config a list", _setter("config", [1, 2]), "config must be an object"),
    ("blocks a string", _setter("config", "blocks", "1"), "config.blocks must be a positive integer"),
    ("blocks true", _setter("config", "blocks", True), "config.blocks"),
    ("blocks 0", _setter("config", "blocks", 0), "config.blocks"),
    ("widths a string", _setter("config", "widths", "4,8,8"), "config.widths must be a non-empty list"),
    ("width a string", _setter("config", "widths", [4, "8", 8]), "config.widths[1]"),
    ("width a float", _setter("config", "widths", [4, 8.0, 8]), "config.widths[1]"),
    ("num_classes 10.5", _setter("config", "num_classes", 10.5), "config.num_classes"),
    ("no std", _setter("config", "std", _DELETE), "config.std is missing"),
    ("two means", _setter("config", "mean", [0.5, 0.5]), "config.mean must be a list of 3"),
    ("mean NaN", _setter("config", "mean", [float("nan"), 0.5, 0.5]), "config.mean[0]"),
    ("mean a string", _setter("config", "mean", [0.5, "0.5", 0.5]), "config.mean[1]"),
    ("std zero", _setter("config", "std", [0.2, 0, 0.2]), "config.std[1] must be a finite number > 0"),
    ("calibration a list", _setter("calibration", []), "calibration must be an object"),
    ("relus missing", _setter("calibration", "relus", _DELETE), "calibration.relus"),
    ("max_abs a string", _setter("calibration", "relus", "relu", "max_abs", "9.3"),
     "calibration.relus['relu'].max_abs"),
    ("max_abs negative", _setter("calibration", "relus", "relu", "max_abs", -1.0),
     "calibration.relus['relu'].max_abs"),
    ("max_abs missing", _setter("calibration", "relus", "relu", "max_abs", _DELETE), "max_abs is missing"),
    ("percentile inf", _setter("calibration", "relus", "relu", "percentile", float("inf")), "percentile"),
    ("images -3", _setter("calibration", "images", -3), "calibration.images"),
    ("checksum a string", _setter("checksum", "abc"), "checksum must be an object"),
    ("checksum md5", _setter("checksum", "algorithm", "md5"), "checksum.algorithm"),
    ("digest not hex", _setter("checksum", "tensors", "xyz"), "checksum.tensors"),
    ("digest missing", _setter("checksum", "calibration", _DELETE), "checksum.calibration"),
]


@pytest.mark.parametrize("edit, text", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_bad_metadata_names_the_field(ck, edit, text):
    folder, _ = ck
    _edit_meta(folder, edit)
    _raises(DataError, load_checkpoint, folder, path=folder / "model.json", text=text)


@pytest.mark.parametrize("raw, text", [
    (b"", "not valid JSON"),
    (b"[1, 2, 3]", "holds a JSON list, expected an object"),
    (b'"config"', "holds a JSON str"),
    (b'{"config": {"blocks": 1, "widths": [4, 8, 8], "num_classes": 10,', "not valid JSON"),
    (b'{"note": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 13)"),
])
def test_unreadable_model_json(ck, raw, text):
    folder, _ = ck
    (folder / "model.json").write_bytes(raw)
    _raises(DataError, load_checkpoint, folder, path=folder / "model.json", text=text)


@pytest.mark.parametrize("cut", [1, 0.3, 0.7, -3])
def test_truncated_model_json(ck, cut):
    folder, _ = ck
    path = folder / "model.json"
    data = path.read_bytes()
    path.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    _raises(DataError, load_checkpoint, folder, path=path, text="not valid JSON")


@pytest.mark.parametrize("edit, what", [
    (lambda m: m["calibration"]["relus"]["relu"].update(max_abs=m["calibration"]["relus"]["relu"]["max_abs"] * 2),
     "calibration block"),
    (lambda m: m["calibration"]["relus"]["layers.0.relu2"].update(count=1), "calibration block"),
    (lambda m: m["config"]["mean"].__setitem__(0, 0.4915), "config block"),
    (lambda m: m["config"].update(widths=[4, 8, 16]), "config block"),
    (lambda m: m["checksum"].update(tensors="0" * 64), "weights (model.pt)"),
])
def test_edited_content_is_a_checksum_error(ck, edit, what):
    folder, _ = ck
    _edit_meta(folder, edit)
    _raises(ChecksumError, load_checkpoint, folder, path=folder, text=what)


def test_changed_calibration_digit_in_the_text(ck):
    folder, _ = ck
    path = folder / "model.json"
    text = path.read_text()
    at = text.index('"max_abs": ') + len('"max_abs": ') + 2
    digit = text[at]
    assert digit.isdigit()
    path.write_text(text[:at] + str((int(digit) + 1) % 10) + text[at + 1:])
    _raises(ChecksumError, load_checkpoint, folder, path=folder, text="calibration block")


def test_old_checkpoint_warns_then_add_checksum(ck):
    folder, model = ck
    checksum = json.loads((folder / "model.json").read_text())["checksum"]
    _edit_meta(folder, _setter("checksum", _DELETE))
    with pytest.warns(UnverifiedCheckpointWarning, match="cannot be verified"):
        loaded, meta = load_checkpoint(folder)
    assert _same(loaded, model) and "checksum" not in meta
    assert add_checksum(folder) == checksum
    assert _same(_load_quiet(folder)[0], model)


@pytest.mark.parametrize("damage, text", [
    ("nan", "holds NaN or infinite values"),
    ("float64", "is torch.float64"),
    ("missing", "missing ['fc.bias']"),
    ("extra", "unexpected ['extra']"),
    ("shape", "fc.weight: expected (10, 8), found (10, 7)"),
    ("bn shape", "tensor layers.0.bn1.weight is torch.float32 (3,), expected torch.float32 (4,)"),
    ("huge config", "does not fit the weights (layers: expected 3000000000, found 3)"),
    ("other widths", "does not fit the weights (fc.weight: expected (10, 16), found (10, 8))"),
    ("mean", "does not match the weights' normalize.mean"),
    ("relus", "calibration.relus does not fit the model"),
])
def test_unverified_checkpoint_is_still_checked(ck, damage, text):
    folder, model = ck
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if damage == "nan":
        state["fc.weight"][0, 0] = float("nan")
    elif damage == "float64":
        state["fc.weight"] = state["fc.weight"].double()
    elif damage == "missing":
        del state["fc.bias"]
    elif damage == "extra":
        state["extra"] = torch.zeros(1)
    elif damage == "shape":
        state["fc.weight"] = state["fc.weight"][:, :7]
    elif damage == "bn shape":
        state["layers.0.bn1.weight"] = state["layers.0.bn1.weight"][:3]
    torch.save(state, folder / "model.pt")
    edits = {"mean": _setter("config", "mean", [0.4, 0.4, 0.4]),
             "huge config": _setter("config", "blocks", 10 ** 9),
             "other widths": _setter("config", "widths", [4, 8, 16]),
             "relus": _setter("calibration", "relus", "nope", {"max_abs": 1.0})}
    _edit_meta(folder, _setter("checksum", _DELETE))
    if damage in edits:
        _edit_meta(folder, edits[damage])
    with pytest.warns(UnverifiedCheckpointWarning):
        exc = _raises(DataError, load_checkpoint, folder, text=text)
    assert str(folder) in str(exc)


def test_missing_checkpoint_files(ck, tmp_path, monkeypatch):
    folder, _ = ck
    (folder / "model.json").unlink()
    _raises(DataError, load_checkpoint, folder, path=folder, text="model.json is missing")
    _raises(DataError, load_checkpoint, folder / "nowhere", text="no such checkpoint folder")
    # a bundled checkpoint by name, where no folder of that name exists; a folder of that name wins
    model, meta = load_checkpoint("resnet20")
    assert meta["test"]["accuracy"] > 89 and model.config.get("activation", "relu") == "relu"
    _raises(DataError, load_checkpoint, "resnet21", text="bundled checkpoints by name: resnet20")
    import shutil
    monkeypatch.chdir(tmp_path)
    shutil.copytree(folder, "resnet20")  # without its model.json (removed above)
    _raises(DataError, load_checkpoint, "resnet20", text="model.json is missing")  # the folder, not the bundled one


@pytest.mark.parametrize("meta, text", [
    ({"calibration": {"relus": {"relu": {"max_abs": float("nan")}}}}, "max_abs"),
    ({"note": {1, 2}}, "cannot be written as JSON"),
    ({"config": {"blocks": 2, "widths": [4, 8, 8], "num_classes": 10, "mean": [0, 0, 0], "std": [1, 1, 1]}},
     "weights do not fit the config"),
])
def test_save_refuses_what_load_would_refuse(tmp_path, meta, text):
    _raises(DataError, save_checkpoint, _model(), meta, tmp_path / "out", text=text)
    assert not (tmp_path / "out").exists()


def test_save_replaces_a_stale_checksum(ck, tmp_path):
    folder, model = ck
    _, meta = _load_quiet(folder)
    meta["checksum"]["tensors"] = "0" * 64
    save_checkpoint(_model(seed=2), meta, tmp_path / "again")
    assert _same(_load_quiet(tmp_path / "again")[0], _model(seed=2))


# ---------------------------------------------------------------- training run state
def test_run_state(tmp_path):
    from dataclasses import asdict

    from ckksnet.training.train import TrainConfig

    run = tmp_path / "run"
    _raises(DataError, load_run_state, run, text="run state is missing")
    run.mkdir()
    model = _model()
    cfg = asdict(TrainConfig(blocks=1, widths=(4, 8, 8)))
    state = model.state_dict()
    cases = [
        (b"garbage", "not a readable run state"),
        ([1, 2], "expected a dict with config"),
        ({"config": {**cfg, "bogus": 1}, "model": state, "history": []}, "does not fit TrainConfig"),
        ({"config": {**cfg, "widths": [4, 8]}, "model": state, "history": []}, "config.widths"),
        ({"config": cfg, "model": {**state, "fc.bias": torch.zeros(3)}, "history": []}, "fc.bias"),
    ]
    for content, text in cases:
        if isinstance(content, bytes):
            (run / "state.pt").write_bytes(content)
        else:
            torch.save(content, run / "state.pt")
        _raises(DataError, load_run_state, run, path=run / "state.pt", text=text)
    torch.save({"config": cfg, "model": state, "history": [{"epoch": 1}], "epoch": 1}, run / "state.pt")
    loaded, tc, history = load_run_state(run)
    assert _same(loaded, model) and tc.widths == (4, 8, 8) and history == [{"epoch": 1}]


def test_copy_of_bundled_checkpoint_detects_a_flip(tmp_path):
    from ckksnet.models import BUNDLED_DIR

    folder = Path(shutil.copytree(BUNDLED_DIR, tmp_path / "resnet20"))
    model, _ = load_bundled()
    pt = folder / "model.pt"
    data = bytearray(pt.read_bytes())
    raw = model.state_dict()["layers.4.conv2.weight"].numpy().tobytes()
    data[bytes(data).index(raw) + 1001] ^= 0x08
    pt.write_bytes(bytes(data))
    _raises(ChecksumError, load_checkpoint, folder, path=folder)

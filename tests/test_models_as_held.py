"""Models, keys and limits as users hold them (issue #30): weights in other dtypes, parallel
wrappers, TorchScript, NaN weights, a drifting approximation, keys without bootstrapping, files of
another OpenFHE version, and memory checked before any key is made."""
from __future__ import annotations

import copy
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import ckksnet
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.core import envelope
from ckksnet.backend import headers as H
from ckksnet.compiler.model_forms import ModelFormWarning
from ckksnet.errors import CompileError, InsufficientMemoryError, MissingKeyError, VersionMismatchError
from tests.helpers import deep_plain_cnn, random_batchnorms

pytestmark = pytest.mark.filterwarnings("ignore::ckksnet.core.preset.InsecurePresetWarning")
IMAGES = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
DEEP_PLAIN = Path(__file__).parent / "data" / "deep_plain_48x8.pt"  # tests/data/make_deep_plain.py


def _cnn(relus: int = 1) -> nn.Module:
    torch.manual_seed(0)
    layers, c = [], 3
    for _ in range(relus):
        layers += [nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
        c = 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)]
    return random_batchnorms(nn.Sequential(*layers), torch.Generator().manual_seed(1)).eval()


def _compile(model, **kw):
    return ckksnet.compile(model, calibration=IMAGES, preset="test", image_size=(8, 8), **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_in_other_dtypes_compile_as_float32_copies(dtype):
    model = _cnn()
    reference = _compile(copy.deepcopy(model)).twin(IMAGES[:4])
    held = copy.deepcopy(model).to(dtype)
    with pytest.warns(ModelFormWarning, match=str(dtype).removeprefix("torch.")):
        twin = _compile(held).twin(IMAGES[:4])
    assert next(held.parameters()).dtype == dtype  # the user's model is left as it was
    tolerance = 1e-9 if dtype == torch.float64 else 5e-2  # rounding of the half-precision weights
    assert np.max(np.abs(twin - reference)) < tolerance and np.array_equal(twin.argmax(1), reference.argmax(1))


def test_a_parallel_wrapper_is_unwrapped():
    model = _cnn()
    with pytest.warns(ModelFormWarning, match="DataParallel"):
        twin = _compile(nn.DataParallel(model)).twin(IMAGES[:4])
    assert np.array_equal(twin, _compile(model).twin(IMAGES[:4]))


def test_torchscript_is_refused_by_name_whole_or_one_block():
    model = _cnn()
    traced = torch.jit.trace(model, torch.rand(1, 3, 8, 8))
    with pytest.raises(CompileError, match="the model is TorchScript"):
        _compile(traced)
    with pytest.raises(CompileError, match="TorchScript"):
        _compile(torch.jit.script(model))
    mixed = nn.Sequential(torch.jit.script(model[:3]), *model[3:])
    with pytest.raises(CompileError, match="the submodule '0' is TorchScript"):
        _compile(mixed)


def test_nan_or_infinite_weights_are_named():
    model = _cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CompileError, match=r"parameter '0.weight' holds 1 NaN or infinite value"):
        _compile(model)
    model = _cnn()
    model[1].running_var[2] = float("inf")
    with pytest.raises(CompileError, match=r"buffer '1.running_var'"):
        _compile(model)


def test_a_checkpoint_saved_from_a_wrapper_loads_without_its_prefix(tmp_path):
    """save_checkpoint unwraps a DataParallel model; weights someone saved from the wrapper
    (keys 'module.<name>', model.json written by hand without a checksum) load with a warning."""
    import json

    from ckksnet.models import load_checkpoint, save_checkpoint
    from ckksnet.models.resnet import resnet_cifar

    model = resnet_cifar(8).eval()
    folder = save_checkpoint(nn.DataParallel(model), {}, tmp_path / "ck")
    assert torch.equal(load_checkpoint(folder)[0].fc.weight, model.fc.weight)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, folder / "model.pt")
    meta = json.loads((folder / "model.json").read_text())
    del meta["checksum"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning) as seen:
        loaded, _ = load_checkpoint(folder)
    assert any("DataParallel/DistributedDataParallel" in str(w.message) for w in seen)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_a_deep_trained_cnn_drifts_and_the_finest_table_brings_it_back():
    """check_depth compares the plan's twin with torch on the first 16 calibration images. A
    trained 48-layer plain CNN (8 channels, 8x8 CIFAR-10; tests/data/make_deep_plain.py)
    accumulates the ReLU approximation's error through its layers: 1.13e-2 off torch with the
    default sign table (alpha 13, eps_bits 9), which warns and names the finest table;
    7.0e-4 with that table (alpha 13, eps_bits 12), which does not warn."""
    from ckksnet.compiler.phases import DRIFT_LOGIT_ERROR, ApproximationDriftWarning, check_depth
    from ckksnet.core.options import CompileOptions

    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximationDriftWarning)  # an honest shallow compile does not warn
        _compile(_cnn(3))
    fixture = torch.load(DEEP_PLAIN)
    model = deep_plain_cnn(48, 8)
    model.load_state_dict(fixture["state_dict"])
    images = fixture["calibration"].numpy()  # 256 test images, uint8 8x8x3
    assert images.shape == (256, 8, 8, 3)
    compile_deep = lambda **kw: ckksnet.compile(model.eval(), calibration=images, preset="test",  # noqa: E731
                                                image_size=(8, 8), **kw)
    with pytest.warns(ApproximationDriftWarning, match=r"alpha=13, eps_bits=12 \(--alpha 13 --eps-bits 12\)"):
        default = compile_deep()
    with pytest.warns(ApproximationDriftWarning):
        coarse = check_depth(default, model, images, (3, 8, 8), None, CompileOptions())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximationDriftWarning)
        finest = compile_deep(alpha=13, eps_bits=12)
        fine = check_depth(finest, model, images, (3, 8, 8), None, CompileOptions(alpha=13, eps_bits=12))
    assert coarse["images"] == fine["images"] == 16 and coarse["agreement"] == fine["agreement"] == 1.0
    assert DRIFT_LOGIT_ERROR < coarse["max_logit_error"] < 5e-2  # measured 1.13e-2
    assert fine["max_logit_error"] < 1e-3 < DRIFT_LOGIT_ERROR and fine["max_logit_error"] < coarse["max_logit_error"] / 10


def test_keys_without_bootstrapping_are_named_as_such():
    net = _compile(_cnn(3))
    assert net.schedule.bootstraps > 0
    client = ckksnet.Client(net, bootstrap_keys=False)
    with pytest.raises(MissingKeyError, match="hold no bootstrapping keys: make the keys with bootstrapping"):
        ckksnet.Server(net, client.evaluation_keys())


def test_files_of_another_openfhe_version_are_refused(monkeypatch):
    from ckksnet.backend import serialize as S

    net = _compile(_cnn())
    client = ckksnet.Client(net)
    data = S.ciphertext_to_bytes(client.keys, client.encrypt(IMAGES[0]))
    _, header = envelope.unpack(data, "ciphertext")
    assert header["openfhe"] == H.openfhe_version()
    monkeypatch.setattr(H, "openfhe_version", lambda: "9.9.9")  # the reader's version differs now
    with pytest.raises(VersionMismatchError, match=r"written by OpenFHE 1\.6\.1.*OpenFHE 9\.9\.9 is installed"):
        S.ciphertext_from_bytes(client.keys, data)


def test_memory_is_checked_before_any_key_is_made(tmp_path):
    """keygen of a secure-preset client plan in a process limited to 3 GiB of address space stops
    at once with both figures (OpenFHE would abort with std::bad_alloc 25 s in); the override is
    named. The plan comes from a tiny model: compiling needs no keys."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        net = ckksnet.compile(_cnn(3), calibration=IMAGES, preset="secure", image_size=(8, 8))
    assert net.schedule.bootstraps > 0  # a key set with bootstrapping keys, as a ResNet's
    net.save(tmp_path / "plan")
    limit = 3 << 30

    def lower_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, "-m", "ckksnet.deploy.cli", "keygen", "--client", str(tmp_path / "plan" / "client_plan.ckksnet"),
           "--out", str(tmp_path / "keys")]
    env = {k: v for k, v in os.environ.items() if k != "CKKSNET_SKIP_MEMORY_CHECK"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=lower_limit, env=env)
    assert out.returncode == 2, out.stderr
    assert "generating the keys of preset 'secure' needs about 12.8 GiB" in out.stderr
    assert "address-space limit (RLIMIT_AS)" in out.stderr and "--skip-memory-check" in out.stderr
    assert not (tmp_path / "keys" / "secret_key.ckks").exists()


def test_the_memory_check_reads_the_limits_and_honours_the_override(monkeypatch):
    from ckksnet.core import memory

    monkeypatch.setattr(memory, "_address_space_room", lambda: 2 * 2**30)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 5 * 2**30)
    monkeypatch.setattr(memory, "_available", lambda: 9 * 2**30)
    assert memory.memory_room_gib() == (2.0, "the process's address-space limit (RLIMIT_AS)")
    with pytest.raises(InsufficientMemoryError, match=r"needs about 3\.0 GiB, but the process's address-space limit"):
        memory.check_memory(3.0, "loading keys")
    memory.check_memory(3.0, "loading keys", override=True)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    memory.check_memory(3.0, "loading keys")
    monkeypatch.delenv(memory.SKIP_ENV)
    memory.check_memory(1.5, "loading keys")  # fits
    assert isinstance(InsufficientMemoryError("x"), MemoryError)

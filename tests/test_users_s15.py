"""What users hit next (issue 38, sections 2, 3 and 5): the models people actually save and write
(training checkpoints, whole pickled models, quantized models, weight and spectral norm, subclassed
layers, untraceable forwards, activations without a kernel, MLPs), answers that cannot be silently
wrong (normalisation constants in 0..255 units, zero activation ranges, one calibration image,
class names), and small things a newcomer meets (``python -m ckksnet``, the insecure-preset
warning once, class names in the demo, the bundled model in the test-preset notebook).

Test preset, tiny models on 8x8 images (each compile takes a fraction of a second); no keys.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ckksnet
from ckksnet.compiler.checkpoints import load_weights
from ckksnet.compiler.model_forms import ModelFormWarning
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.deploy.cli import main as cli
from ckksnet.errors import CompileError, DataError, InputError
from ckksnet.nn import Normalize
from tests.helpers import random_batchnorms

ROOT = Path(__file__).resolve().parents[1]
IMAGES = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
pytestmark = pytest.mark.filterwarnings("ignore::ckksnet.core.preset.InsecurePresetWarning")


def small(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return random_batchnorms(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4), nn.ReLU(),
                                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
                             torch.Generator().manual_seed(1))


def compile8(model, calibration=IMAGES, **kw):
    return ckksnet.compile(model, calibration=calibration, preset="test", image_size=(8, 8), alpha=8, eps_bits=8, **kw)


def agrees(model, plan, images=IMAGES[:4], tol=5e-2):
    """The twin against torch on ``images`` (uint8 NHWC)."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255
    with torch.no_grad():
        want = model.eval()(x).double().numpy()
    got = plan.twin(images)
    assert np.max(np.abs(got - want)) < tol * max(1.0, np.max(np.abs(want))), (got, want)


# ============================================================ 2. weights files people save
def test_training_checkpoints_give_their_state_dict_and_say_which_key(tmp_path):
    model = small()
    sd = model.state_dict()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    opt.step()
    layouts = {"model_state_dict": {"model_state_dict": sd, "optimizer_state_dict": opt.state_dict(), "epoch": 7},
               "model": {"model": sd, "epoch": 5, "best_acc": 0.91},
               "state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "arch": "small"}}
    for key, ckpt in layouts.items():
        torch.save(ckpt, tmp_path / f"{key}.pt")
        target = small(bias=True)
        for p in target.parameters():
            p.data.zero_()
        with pytest.warns(ModelFormWarning, match=f"using the state dict under '{key}'"):
            load_weights(target, str(tmp_path / f"{key}.pt"))
        assert all(torch.equal(target.state_dict()[k], v) for k, v in sd.items())


def test_ambiguous_or_missing_state_dicts_are_refused_with_keys_and_the_conversion(tmp_path):
    sd = small().state_dict()
    other = nn.Linear(2, 2).state_dict()
    torch.save({"model": sd, "ema": sd, "epoch": 3}, tmp_path / "two.pt")
    with pytest.raises(DataError, match=r"several state dicts \('model', 'ema'.*keys 'model', 'ema', 'epoch'.*"
                                        r"python -c .*torch.save\(torch.load\('.*two.pt'\)\['model'\]"):
        load_weights(small(), str(tmp_path / "two.pt"))
    torch.save({"model": sd, "head": other}, tmp_path / "fits_one.pt")  # only one fits the model: taken
    with pytest.warns(ModelFormWarning, match="under 'model'"):
        load_weights(small(), str(tmp_path / "fits_one.pt"))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "none.pt")
    with pytest.raises(DataError, match=r"without a state dict in it \(keys 'epoch', 'lr'\).*python -c"):
        load_weights(small(), str(tmp_path / "none.pt"))


class _Marker:
    """Unpickling it would create a file: proof that a refused file was never unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_whole_pickled_model_is_read_only_with_consent(tmp_path):
    model = small()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(DataError, match=r"whole pickled model \(torch.save\(model\)\).*--trust-pickle.*"
                                        r"python -c .*state_dict\(\)"):
        load_weights(small(bias=True), str(tmp_path / "whole.pt"))
    target = small()
    for p in target.parameters():
        p.data.zero_()
    load_weights(target, str(tmp_path / "whole.pt"), trust_pickle=True)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in model.state_dict().items())
    marker = tmp_path / "unpickled"
    torch.save({"state_dict": model.state_dict(), "hook": _Marker(marker)}, tmp_path / "objects.pt")
    with pytest.raises(DataError, match="pickled Python objects beyond tensors.*--trust-pickle"):
        load_weights(small(), str(tmp_path / "objects.pt"))
    assert not marker.exists()  # refused without running anything from the file


MODULE = textwrap.dedent('''
    import torch.nn as nn


    def rgb():
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10))


    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 5))
''')


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "users_nets.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import users_nets

    torch.manual_seed(2)
    model = users_nets.rgb()
    torch.save(model, tmp_path / "whole.pt")
    torch.save({"model_state_dict": model.state_dict(), "epoch": 1}, tmp_path / "ckpt.pt")
    np.save(tmp_path / "cal.npy", IMAGES)
    np.save(tmp_path / "one.npy", IMAGES[0])
    np.save(tmp_path / "gray.npy", np.random.default_rng(3).random((6, 1, 8, 8)))
    yield tmp_path
    sys.modules.pop("users_nets", None)


BASE = ["--model", "users_nets:rgb", "--image-size", "8", "--calibration", "cal.npy", "--preset", "test",
        "--alpha", "8", "--eps-bits", "8"]


def test_the_command_line_reads_checkpoints_and_pickled_models_with_consent(folder, capsys):
    assert cli(["plan", *BASE, "--weights", "whole.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ckksnet plan: error: --weights whole.pt holds a whole pickled model") and \
        "--trust-pickle" in err, err
    assert cli(["plan", *BASE, "--weights", "whole.pt", "--trust-pickle", "--json"]) == 0
    capsys.readouterr()
    with pytest.warns(ModelFormWarning, match="using the state dict under 'model_state_dict'"):
        assert cli(["plan", *BASE, "--weights", "ckpt.pt", "--json"]) == 0


# ============================================================ 2. model forms
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def _quantized_models():
    torch.backends.quantized.engine = "qnnpack" if "fbgemm" not in torch.backends.quantized.supported_engines \
        else "fbgemm"
    aq = torch.ao.quantization

    class Static(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = aq.QuantStub(), aq.DeQuantStub()
            self.conv, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

        def forward(self, x):
            x = self.pool(self.relu(self.conv(self.quant(x))))
            return self.dequant(self.fc(x.flatten(1)))

    dynamic = aq.quantize_dynamic(small(), {nn.Linear}, dtype=torch.qint8)
    static = Static().eval()
    static.qconfig = aq.get_default_qconfig(torch.backends.quantized.engine)
    prepared = aq.prepare(static)
    prepared(torch.rand(4, 3, 8, 8))
    static_int8 = aq.convert(prepared)
    qat = Static().train()
    qat.qconfig = aq.get_default_qat_qconfig(torch.backends.quantized.engine)
    qat = aq.prepare_qat(qat).eval()
    return {"dynamic": dynamic, "static int8": static_int8, "QAT": qat, "float": Static().eval()}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_quantized_models_are_refused_by_name():
    models = _quantized_models()
    for kind in ("dynamic", "static int8", "QAT"):
        with pytest.raises(CompileError, match=r"is quantized: compile the float model"):
            compile8(models[kind])
    compile8(models["float"])  # QuantStub / DeQuantStub in a float model are identities: it compiles


@pytest.mark.parametrize("form", ["parametrizations.weight_norm", "parametrizations.spectral_norm",
                                  "weight_norm (old)"])
def test_weight_and_spectral_norm_compile_with_the_effective_weight(form):
    model = small()
    if form == "parametrizations.weight_norm":
        torch.nn.utils.parametrizations.weight_norm(model[0])
        with torch.no_grad():
            model[0].parametrizations.weight.original0.mul_(1.7)  # g changed: the effective weight is not v
    elif form == "parametrizations.spectral_norm":
        torch.nn.utils.parametrizations.spectral_norm(model[5])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the old form
            torch.nn.utils.weight_norm(model[0])
        with torch.no_grad():
            model[0].weight_g.mul_(1.7)
    plan = compile8(model.eval())
    agrees(model, plan)


class InitConv(nn.Conv2d):
    """A subclass that only changes initialisation: computes as nn.Conv2d."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        nn.init.kaiming_normal_(self.weight)


class ScaledConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_subclasses_of_standard_layers():
    model = small()
    model[0] = InitConv(3, 4, 3, padding=1)
    plan = compile8(model.eval())
    agrees(model, plan)
    model[0] = ScaledConv(3, 4, 3, padding=1)
    with pytest.raises(CompileError, match=r"module '0' \(ScaledConv\) subclasses nn.Conv2d but overrides forward "
                                           r"at test_users_s15.py:\d+ \(`def forward\(self, x\):`\)"):
        compile8(model.eval())


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = small()

    def forward(self, x):
        if x.mean() > 0.5:
            return self.body(x)
        return self.body(1 - x)


def test_an_untraceable_forward_names_the_function_and_line():
    with pytest.raises(CompileError, match=r"torch.fx cannot trace the model in forward\(\) at "
                                           r"test_users_s15.py:\d+ \(`if x.mean\(\) > 0.5:`\)"):
        compile8(DataDependent().eval())


# not SiLU: tests/test_example_silu.py registers examples/silu_kernel.py's kernel in the same process
@pytest.mark.parametrize("act", [nn.GELU(), nn.ELU(), nn.Tanh()])
def test_an_unsupported_activation_says_what_compiles_instead(act):
    model = small()
    model[2] = act
    with pytest.raises(CompileError, match=r"unsupported operation: nn\.\w+ has no encrypted kernel; what compiles "
                                           r"instead: nn.ReLU .*ckksnet.nn.PolyAct.*examples/silu_kernel.py"):
        compile8(model.eval())


class Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.gelu(self.conv(x)).mean((2, 3))


def test_a_functional_activation_gets_the_hint_too():
    with pytest.raises(CompileError, match=r"function 'gelu'.*F.gelu has no encrypted kernel.*PolyAct"):
        compile8(Gelu().eval(), calibration={})


def _mlp(inputs: int) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_an_mlp_infers_its_channels():
    model = _mlp(3 * 64)
    for kw in ({"mean": 0.5, "std": 0.25}, {}):  # one value for every channel, or none
        plan = compile8(model, **kw)
        assert plan.input_shape == (3, 8, 8)
    agrees(model, compile8(model))
    gray = np.random.default_rng(4).random((6, 1, 8, 8))
    plan = compile8(_mlp(64), calibration=gray)  # one channel: the dense layer and the images say so
    assert plan.input_shape == (1, 8, 8)
    with pytest.raises(CompileError, match="cannot tell how many channels"):  # 100 inputs: no C x 8 x 8
        compile8(_mlp(100))


def test_the_command_line_infers_an_mlps_channels(folder, capsys):
    assert cli(["plan", "--model", "users_nets:mlp", "--image-size", "8", "--calibration", "gray.npy",
                "--preset", "test", "--alpha", "8", "--eps-bits", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [1, 8, 8]


# ============================================================ 3. answers that cannot be silently wrong
IMAGENET_255 = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def test_normalisation_constants_in_0_255_units_are_refused():
    mean, std = IMAGENET_255
    with pytest.raises(CompileError, match=r"look like 0..255 pixel units.*about -2.*mean=\(0.485, 0.456, 0.406\), "
                                           r"std=\(0.229, 0.224, 0.225\)"):
        compile8(small(), mean=mean, std=std)
    with pytest.raises(CompileError, match="Normalize module.*0..255 pixel units"):
        compile8(nn.Sequential(Normalize(mean, std), small()).eval())
    plan = compile8(small(), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # the same, in [0, 1] units
    assert np.allclose(plan.mean, (0.485, 0.456, 0.406))


def test_a_zero_activation_range_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    with pytest.raises(CompileError, match=r"activation '1': its calibrated input range is max \|x\| = 0 "):
        compile8(model, calibration=np.zeros((4, 8, 8, 3), np.uint8))  # blank images
    with pytest.raises(CompileError, match=r"activation '2': .*max_abs 0"):
        compile8(small(), calibration={"2": {"max_abs": 0.0}})
    with pytest.raises(CompileError, match=r"activation '2': .*= nan"):
        compile8(small(), calibration={"2": {"max_abs": float("nan")}})


def test_one_calibration_image_without_a_batch_axis_is_a_batch_of_one():
    model = small()
    one = compile8(model, calibration=IMAGES[0])  # uint8 (H, W, C)
    batch = compile8(model, calibration=IMAGES[:1])
    assert np.array_equal(one.twin(IMAGES[:3]), batch.twin(IMAGES[:3]))
    chw = compile8(model, calibration=IMAGES[0].transpose(2, 0, 1) / 255.0)  # float (C, H, W)
    assert np.allclose(chw.twin(IMAGES[:3]), batch.twin(IMAGES[:3]))
    from ckksnet.compiler.calibrate import calibrate

    stats = calibrate(model, IMAGES[0], image_shape=(3, 8, 8))  # one image, not 8 rows of one
    assert stats == calibrate(model, IMAGES[:1], image_shape=(3, 8, 8)) and stats["2"]["count"] == 4 * 8 * 8


@pytest.mark.filterwarnings("ignore:--model users_nets.rgb without --weights")
def test_classes_are_given_on_compile_recorded_in_the_plan_and_printed_by_predict(folder, capsys):
    names = "plane,car,bird,cat,deer,dog,frog,horse,ship,truck"
    assert cli(["compile", *BASE, "--out", "named", "--classes", names, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == names.split(",")
    spec = ckksnet.load_client_spec(folder / "named" / "client_plan.ckksnet")
    assert list(spec.classes) == names.split(",")
    assert cli(["compile", *BASE, "--out", "plain", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == [str(i) for i in range(10)]  # not CIFAR-10's
    assert cli(["compile", *BASE, "--out", "wrong", "--classes", "a,b,c"]) == 2
    assert "gives 3 name(s) but the model has 10 outputs" in capsys.readouterr().err
    (folder / "names.txt").write_text("\n".join(names.split(",")) + "\n")
    assert cli(["predict", "--model", "users_nets:rgb", "--image-size", "8", "one.npy", "--classes", "names.txt",
                "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["predictions"][0]
    assert pred["predicted"] in names.split(",") and set(pred["probabilities"]) == set(names.split(","))
    assert cli(["predict", "--model", "users_nets:rgb", "--image-size", "8", "one.npy", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["predictions"][0]
    assert pred["predicted"] == str(pred["predicted_index"])  # a --model has no CIFAR-10 names unless given


def test_compile_refuses_class_names_of_another_count():
    with pytest.raises(CompileError, match="gives 2 name.*has 3 outputs"):
        compile8(small(), classes=("a", "b"))


def test_class_names_parse_from_a_list_or_a_file(tmp_path):
    from argparse import Namespace

    from ckksnet.deploy.flags import class_names

    assert class_names(Namespace(classes="a, b,c")) == ("a", "b", "c")
    with pytest.raises(InputError, match="names repeat"):
        class_names(Namespace(classes="a,a"))
    with pytest.raises(InputError, match="no empty name"):
        class_names(Namespace(classes="a,,b"))


# ============================================================ 5. small things a newcomer met
def _python(*args, code=None, cwd=None):
    cmd = [sys.executable, *(("-c", code) if code else ()), *args]
    src = Path(ckksnet.__file__).resolve().parents[1]  # the ckksnet under test
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or ROOT, env=env)


def test_python_dash_m_ckksnet_runs_the_command_line():
    out = _python("-m", "ckksnet", "--help")
    assert out.returncode == 0 and "usage: ckksnet" in out.stdout and "compile" in out.stdout, out.stderr


def test_the_insecure_preset_warning_is_printed_once_per_command():
    """compile and the key set each look the preset up (the demo does both): one line."""
    code = textwrap.dedent('''
        import sys
        from ckksnet.core.preset import get_preset
        from ckksnet.deploy import cli

        def twice(args):
            get_preset("test")  # as the compiler does
            get_preset("test")  # as the key set does, from another line
            return 0

        cli._cmd_plan = twice
        sys.exit(cli.main(["plan"]))
    ''')
    out = _python(code=code)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("is NOT secure") == 1, out.stderr


def test_the_demo_prints_class_names_where_known(capsys):
    from ckksnet.deploy.cli import _print_image
    from ckksnet.inference import _class_names
    from ckksnet.compiler.phases import CIFAR10_CLASSES

    rec = {"index": 0, "label": 3, "plain_pred": 3, "enc_pred": 5, "max_abs_logit_diff": 1e-3, "seconds": 1.0,
           "bootstraps": 2, **_class_names(CIFAR10_CLASSES, label=3, plain=3, enc=5)}
    _print_image(rec)
    line = capsys.readouterr().out
    assert "label cat (3), plaintext cat (3), encrypted dog (5) (DIFFERENT)" in line, line
    assert _class_names(tuple(str(i) for i in range(10)), label=3) == {}  # numbers only: printed as before


def test_the_test_preset_notebook_uses_the_bundled_model():
    nb = json.loads((ROOT / "examples" / "encrypted_cifar.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "load_bundled()" in code and "random weights" not in code and "ResNetCifar(" not in code
    assert "manual_seed" not in code  # no random model at any preset

"""CNNs written the way people write them (issue 19): every spelling of an operation ckksnet
computes compiles to the same kind of plan, checked against torch through the twin; everything
else is refused at compile time with a CompileError naming the node and its source line.

Test preset, random weights with random BatchNorm statistics, small images (8x8) so that every
layout fits the test preset's 2048 slots.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ckksnet.core.preset import InsecurePresetWarning, get_preset
from ckksnet.compiler import compile
from ckksnet.errors import CompileError
from ckksnet.nn import Normalize
from tests.helpers import random_bn
from ckksnet.runtime import Client, Server

IMAGES = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        yield


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (seeded) and random BatchNorm statistics, eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.running_mean is not None:
            random_bn(m, gen)
    return model.eval()


def torch_logits(model: nn.Module, images: np.ndarray, mean=None, std=None) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255
    if mean is not None:
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model(x).double().numpy().reshape(len(images), -1)


def check(model: nn.Module, tol: float = 2e-3, images=IMAGES, size=(8, 8), **kw):
    """Compile at the test preset; the twin must match torch within ``tol`` (the ReLU
    approximation's error; maps without ReLU are exact up to float32)."""
    model = randomize(model)
    plan = compile(model, calibration=images, preset="test", image_size=size, **kw)
    want = torch_logits(model, images[:8], kw.get("mean"), kw.get("std"))
    got = plan.twin(images[:8])
    err = np.max(np.abs(got - want))
    assert err < tol * max(1.0, np.max(np.abs(want))), err
    return plan, got, want


def kinds(plan) -> list[str]:
    return [s.kind for s, _, _ in plan.steps]


# ============================================================= normalisation
class Plain(nn.Module):
    """Normalisation in the data pipeline: the model starts with a convolution."""

    def __init__(self, norm: bool = False):
        super().__init__()
        self.norm = Normalize(MEAN, STD) if norm else None
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        if self.norm is not None:
            x = self.norm(x)
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_normalisation_argument_module_or_none():
    plan, _, _ = check(Plain(), mean=MEAN, std=STD)  # torch sees normalised images
    assert np.allclose(plan.mean, MEAN) and np.allclose(plan.std, STD)
    plan, _, _ = check(Plain())  # neither: pixels in [0, 1] as they are
    assert np.all(plan.mean == 0) and np.all(plan.std == 1)
    plan, _, _ = check(Plain(norm=True))  # the module: the client's preprocessing
    assert np.allclose(plan.mean, MEAN)
    plan, _, _ = check(Plain(), mean=0.5, std=0.25)  # one value for every channel
    assert np.all(plan.mean == 0.5) and plan.mean.shape == (3,)
    with pytest.raises(CompileError, match="Normalize module 'norm'.*mean/std"):
        compile(randomize(Plain(norm=True)), calibration=IMAGES, preset="test", image_size=(8, 8), mean=MEAN, std=STD)
    with pytest.raises(CompileError, match="std must be positive"):
        compile(randomize(Plain()), calibration=IMAGES, preset="test", image_size=(8, 8), mean=MEAN, std=(1, 0, 1))


class InlineNorm(Plain):
    """Normalisation written inline with buffers: constant shifts and scales fold into the conv."""

    def __init__(self):
        super().__init__()
        self.register_buffer("m", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("s", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        return super().forward((x - self.m) / self.s)


def test_inline_normalisation_folds_into_the_first_convolution():
    plan, _, _ = check(InlineNorm())
    assert kinds(plan) == ["linear", "relu", "pool", "linear"]


# ============================================================= ReLU spellings
class TwoRelu(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=form == "module_inplace")
        self.relu2 = nn.ReLU()
        self.unused = nn.ReLU()  # defined, never called
        self.fc = nn.Linear(4, 3)

    def act(self, x, i):
        f = self.form
        if f in ("module", "module_inplace"):
            return self.relu(x) if i == 0 else self.relu2(x)
        if f == "shared":
            return self.relu(x)  # one module, called twice
        if f == "F.relu":
            return F.relu(x)
        if f == "F.relu_inplace":
            return F.relu(x, inplace=True)
        if f == "torch.relu":
            return torch.relu(x)
        if f == "torch.relu_":
            return torch.relu_(x)
        if f == "method":
            return x.relu()
        if f == "method_":
            x.relu_()  # in place, result unused: later readers of x see it
            return x
        raise AssertionError(f)

    def forward(self, x):
        x = self.act(self.b1(self.c1(x)), 0)
        x = self.act(self.b2(self.c2(x)), 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


@pytest.mark.parametrize("form", ["module", "module_inplace", "shared", "F.relu", "F.relu_inplace", "torch.relu",
                                  "torch.relu_", "method", "method_"])
def test_relu_spellings(form):
    plan, _, _ = check(TwoRelu(form))
    assert kinds(plan) == ["linear", "relu", "linear", "relu", "pool", "linear"]
    names = [s.name for s, _, _ in plan.steps if s.kind == "relu"]
    assert len(set(names)) == 2
    if form == "shared":
        assert names == ["relu@1", "relu@2"]
    if form == "module":
        assert names == ["relu", "relu2"]


def test_shared_relu_reads_a_module_keyed_calibration_dict():
    """A checkpoint's calibration dict is keyed by module name: each call of a shared module
    reads it (the max over its calls)."""
    model = randomize(TwoRelu("shared"))
    plan = compile(model, calibration={"relu": {"max_abs": 4.0}}, preset="test", image_size=(8, 8))
    relus = [s for s, _, _ in plan.steps if s.kind == "relu"]
    assert [r.relu.bound for r in relus] == [6.0, 6.0]


def test_functional_relu_calibration_is_keyed_by_step_name():
    from ckksnet.compiler.calibrate import calibrate

    model = randomize(TwoRelu("F.relu"))
    cal = calibrate(model, IMAGES, q=1.0)
    plan = compile(model, calibration=cal, preset="test", image_size=(8, 8))
    assert sorted(cal) == sorted(s.name for s, _, _ in plan.steps if s.kind == "relu") == ["relu", "relu_1"]
    assert all(v["count"] == len(IMAGES) * 4 * 64 for v in cal.values())
    # float NCHW images (what twin and encrypt accept) calibrate the same
    nchw = IMAGES.transpose(0, 3, 1, 2).astype(np.float64) / 255
    assert calibrate(model, nchw, q=1.0) == cal
    plan2 = compile(model, calibration=nchw, preset="test", image_size=(8, 8))
    assert [v.scale for v in plan2.values] == [v.scale for v in plan.values]


# ============================================================= pooling and flatten spellings
class Head(nn.Module):
    def __init__(self, pool: str, flat: str):
        super().__init__()
        self.pool_form, self.flat = pool, flat
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.gap = {"adaptive": nn.AdaptiveAvgPool2d(1), "adaptive11": nn.AdaptiveAvgPool2d((1, 1)),
                    "avgpool8": nn.AvgPool2d(8)}.get(pool, nn.Identity())
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        p = self.pool_form
        if p in ("adaptive", "adaptive11", "avgpool8"):
            x = self.gap(x)
        elif p == "F.avg_pool2d":
            x = F.avg_pool2d(x, x.size(3))
        elif p == "F.avg_pool2d_size":
            x = F.avg_pool2d(x, x.size()[3])
        elif p == "F.adaptive":
            x = F.adaptive_avg_pool2d(x, 1)
        elif p == "mean":
            x = x.mean((2, 3))
        elif p == "torch.mean_keepdim":
            x = torch.mean(x, dim=[-1, -2], keepdim=True)
        f = self.flat
        if f == "module":
            x = self.flatten(x)
        elif f == "torch.flatten":
            x = torch.flatten(x, 1)
        elif f == "method":
            x = x.flatten(1)
        elif f == "view":
            x = x.view(x.size(0), -1)
        elif f == "view-1":
            x = x.view(-1, 6)
        elif f == "reshape":
            x = x.reshape(x.shape[0], -1)
        elif f == "squeeze":
            x = x.squeeze(-1).squeeze(-1)
        return self.fc(x)


@pytest.mark.parametrize("pool, flat", [("adaptive", "module"), ("adaptive11", "torch.flatten"),
                                        ("avgpool8", "view"), ("F.avg_pool2d", "view"),
                                        ("F.avg_pool2d_size", "reshape"), ("F.adaptive", "method"),
                                        ("mean", "none"), ("torch.mean_keepdim", "squeeze"),
                                        ("adaptive", "view-1")])
def test_global_pooling_and_flatten_spellings(pool, flat):
    plan, _, _ = check(Head(pool, flat))
    # rotate-and-sum pooling (no level), the 1/64 folded into the dense layer
    assert kinds(plan) == ["linear", "relu", "pool", "linear"]


class PartialPool(nn.Module):
    def __init__(self, pool: nn.Module):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 4, 3, padding=1), pool
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1),
                                  nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
                                  nn.AdaptiveAvgPool2d(3)], ids=["2", "3s2p1", "ceil", "adaptive3"])
def test_partial_average_pooling_is_a_linear_map(pool):
    plan, _, _ = check(PartialPool(pool))
    assert kinds(plan) == ["linear", "relu", "linear", "pool", "linear"]


# ============================================================= convolutions in full
class ConvOnly(nn.Module):
    """One convolution, materialized in its own layout (the addition), then flattened: exact."""

    def __init__(self, conv: nn.Conv2d, second: nn.Conv2d | None = None):
        super().__init__()
        self.conv, self.second = conv, second

    def forward(self, x):
        y = self.conv(x)
        y = y + y
        if self.second is not None:
            y = self.second(y)
            y = y + y
        return y.flatten(1)


CONVS = {
    "valid 5x5": nn.Conv2d(3, 2, 5),  # 8x8 -> 4x4 (torch's 28 -> 24)
    "valid stride 2": nn.Conv2d(3, 2, 3, stride=2),  # 8 -> 3
    "padding 2 grows": nn.Conv2d(3, 2, 3, padding=2),  # 8 -> 10
    "stride 3": nn.Conv2d(3, 4, 3, stride=3, padding=1),  # 8 -> 3
    "non-square kernel": nn.Conv2d(3, 2, (3, 5), padding=(1, 2)),
    "non-square stride": nn.Conv2d(3, 2, 3, stride=(2, 1), padding=1),
    "same even kernel": nn.Conv2d(3, 2, 4, padding="same"),
    "same dilated": nn.Conv2d(3, 2, 3, padding="same", dilation=2),
    "valid string": nn.Conv2d(3, 2, 3, padding="valid"),
    "reflect": nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"),
    "replicate": nn.Conv2d(3, 2, 5, padding=2, padding_mode="replicate"),
    "circular": nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular"),
    "circular stride 2": nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
    "groups": nn.Conv2d(3, 6, 3, padding=1, groups=3),
    "dilation": nn.Conv2d(3, 2, 3, padding=2, dilation=2),
    "1x1 stride 2": nn.Conv2d(3, 4, 1, stride=2),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name", list(CONVS))
def test_convolution_matches_torch(name):
    conv = CONVS[name]
    plan, got, want = check(ConvOnly(conv), tol=1e-5)
    assert want.shape[1] == got.shape[1]


@pytest.mark.parametrize("size", [(7, 7), (8, 6), (5, 9)])
def test_odd_and_non_square_images(size):
    """Sizes the stride does not divide: the output keeps the input's grid (top-left)."""
    images = np.random.default_rng(1).integers(0, 256, (12,) + size + (3,), dtype=np.uint8)
    model = ConvOnly(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False))
    check(model, tol=1e-5, images=images, size=size)


def test_depthwise_then_pointwise_and_valid_chain():
    model = ConvOnly(nn.Conv2d(3, 3, 3, groups=3), nn.Conv2d(3, 5, 3, stride=2))  # 8 -> 6 -> 2
    check(model, tol=1e-5)


# ============================================================= shortcuts and additions
class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class AkamasterBlock(nn.Module):
    """The block of the most used public CIFAR ResNet (option A as a lambda, F.relu, +=)."""

    def __init__(self, in_planes, planes, stride=1, option="A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4),
                                                            "constant", 0))
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class AkamasterResNet(nn.Module):
    def __init__(self, n=1, widths=(4, 8, 16), option="A", classes=10):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make(widths[0], n, 1, option)
        self.layer2 = self._make(widths[1], n, 2, option)
        self.layer3 = self._make(widths[2], n, 2, option)
        self.linear = nn.Linear(widths[2], classes)

    def _make(self, planes, n, stride, option):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(AkamasterBlock(self.in_planes, planes, s, option))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


@pytest.mark.parametrize("option", ["A", "B"])
def test_akamaster_style_resnet(option):
    plan, _, _ = check(AkamasterResNet(option=option), mean=MEAN, std=STD)
    k = kinds(plan)
    assert k.count("relu") == 7 and k.count("add") == 3 and k.count("pool") == 1
    # each shortcut (slice + channel padding, or 1x1 conv + BN) is one linear step
    assert k.count("linear") == 1 + 3 * 2 + 2 + 1


class TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock habits: one ReLU(inplace=True) module used twice, a downsample
    Sequential, identity = x, out += identity."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Mixed(nn.Module):
    """Spellings mixed in one model: stem with reflect padding and a valid 1x1, torchvision
    blocks, a pre-activation style BatchNorm, dropout, partial pooling, a functional head."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.stem = nn.Conv2d(3, 4, 3)  # valid after explicit reflect padding: 8 -> 8
        self.bn = nn.BatchNorm2d(4)
        self.block1 = TorchvisionBlock(4, 4)
        self.block2 = TorchvisionBlock(4, 8, stride=2)
        self.pre = nn.BatchNorm2d(8)  # a BatchNorm that follows an addition: a per-channel map
        self.drop = nn.Dropout(0.3)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(self.pad(x))))
        x = self.block2(self.block1(x))
        x = self.pool(F.relu(self.pre(x), inplace=True))
        x = self.drop(torch.flatten(x, 1))
        x = F.relu(self.fc1(x))
        return self.fc2(x) * 0.5 + 1.0


def test_mixed_spellings():
    plan, _, _ = check(Mixed())
    k = kinds(plan)
    assert k.count("relu") == 7 and k.count("add") == 2 and "pool" not in k


class LeNet(nn.Module):
    """The classic: 28x28 grayscale, valid 5x5 convolutions that shrink the map (28 -> 24 -> 12 ->
    8 -> 4), average pooling, a dense head on the flattened map."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 2, 5), nn.Conv2d(2, 4, 5)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.reshape(x.size(0), -1))


def test_lenet_valid_convolutions_shrink_the_map():
    images = np.random.default_rng(2).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    plan, _, _ = check(LeNet(), images=images, size=(28, 28))
    layouts = [plan.values[out].layout for s, _, out in plan.steps if s.kind == "linear"]
    assert [lay.shape for lay in layouts[:3]] == [(2, 24, 24), (2, 12, 12), (4, 8, 8)]
    assert all(lay.grid_h == 28 for lay in layouts[:3]) and layouts[1].gap == 2  # the input's grid, kept
    assert layouts[3].length == 64  # the second pool, flattened, feeds the dense layer


class OddLayouts(nn.Module):
    """Layouts whose grid is larger than the map (5x5 images, stride 2 -> 3x3), padding modes, an
    option-A shortcut on them, global pooling of a 3x3 map: no ReLU, so it runs encrypted fast."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.c1 = nn.Conv2d(3, 4, 3)  # 5 -> 5 after the explicit padding
        self.c2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, padding_mode="circular")  # 5 -> 3
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        y = self.c1(self.pad(x))
        y = self.bn(self.c2(y)) + F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        return self.fc(F.avg_pool2d(y, 3).flatten(1))


def test_odd_layouts_run_encrypted():
    images = np.random.default_rng(4).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    plan, twin, _ = check(OddLayouts(), tol=1e-5, images=images, size=(5, 5))
    assert kinds(plan) == ["linear", "linear", "linear", "add", "pool", "linear"]
    assert plan.values[plan.steps[1][2]].layout.grid_h == 5
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    got = client.decrypt(server.run(client.encrypt(images[0])))
    assert np.max(np.abs(got - twin[0])) < 1e-5 * max(1.0, np.max(np.abs(twin[0])))


# ============================================================= refusals, clearly
class Refused(nn.Module):
    def __init__(self, what: str):
        super().__init__()
        self.what = what
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=what != "bn_no_stats")
        self.maxpool = nn.MaxPool2d(2)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.bn(self.conv(x))
        w = self.what
        if w == "maxpool":
            x = self.maxpool(x)
        elif w == "gelu":
            x = self.gelu(x)
        elif w == "square":
            x = x * x
        elif w == "channel_mean":
            x = x - x.mean(1, keepdim=True)
        elif w == "dropout_training":
            x = F.dropout(x, 0.1)
        elif w == "cat":
            x = torch.cat([x, x], 1)[:, :4]
        elif w == "sigmoid":
            x = torch.sigmoid(x)
        return self.fc(F.relu(x).mean((2, 3)))


@pytest.mark.parametrize("what, pattern", [
    ("maxpool", r"module 'maxpool' \(MaxPool2d\) at test_models_people_write.py:\d+: x = self.maxpool\(x\)"),
    ("gelu", r"module 'gelu' \(GELU\) at .*unsupported"),
    ("square", r"function 'mul' \(node mul\) at .*x = x \* x.*product of two activations"),
    ("channel_mean", r"method .mean\(\) \(node mean\).*mixes channels"),
    ("dropout_training", r"node dropout.*training=True"),
    ("cat", r"function 'cat' \(node cat\).*unsupported"),
    ("sigmoid", r"function 'sigmoid'.*x = torch.sigmoid\(x\)"),
    ("bn_no_stats", r"module 'bn' \(BatchNorm2d\).*running statistics \(track_running_stats=False\)"),
])
def test_refusals_name_the_node_and_line(what, pattern):
    model = Refused(what).eval()
    with pytest.raises(CompileError, match=pattern):
        compile(model, calibration={"relu": {"max_abs": 1.0}}, preset="test", image_size=(8, 8))


def test_a_refusal_inside_nn_sequential_names_the_layer_not_ckksnet_code():
    """nn.Sequential's forward is torch's: no user line exists, so none is quoted (it once quoted
    the line of ckksnet that called compile); max pooling names the layer to use instead."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 4)).eval()
    with pytest.raises(CompileError, match=r"^module '1' \(MaxPool2d\): unsupported operation: .*use nn.AvgPool2d"):
        compile(model, calibration={"relu": {"max_abs": 1.0}}, preset="test", image_size=(8, 8))


def test_levels_beyond_a_preset_without_bootstrapping_are_refused():
    preset = get_preset("test").with_(name="test-nobootstrap", bootstrap=False)
    with pytest.raises(CompileError, match=r"needs (\d+) levels; preset 'test-nobootstrap' offers 26 and has no "
                                           r"bootstrapping") as info:
        compile(randomize(TwoRelu("F.relu")), calibration=IMAGES, preset=preset, image_size=(8, 8))
    import re

    needed = int(re.search(r"needs (\d+) levels", str(info.value)).group(1))
    assert 26 < needed < 40  # 3 linear maps and two ReLUs of 14 levels each


def test_compile_leaves_training_modes_as_they_were():
    model = randomize(TwoRelu("module"))
    model.train()
    model.b2.eval()  # a frozen BatchNorm inside a training model stays frozen
    before = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN statistics untouched


def test_dead_branches_and_unused_modules_cost_nothing():
    class Dead(Plain):
        def forward(self, x):
            y = F.relu(self.conv(x))  # computed, never used
            del y
            return super().forward(x)

    plan, _, _ = check(Dead())
    assert kinds(plan) == ["linear", "relu", "pool", "linear"]


# ============================================================= arithmetic, padding, slicing forms
class Forms(nn.Module):
    """No ReLU (exact): subtraction and alpha, negation, constants, padding modules and F.pad
    (a constant value, a negative pad that crops), Ellipsis slices, BatchNorm1d, an MLP head."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.zero, self.const = nn.ZeroPad2d((1, 0, 2, 1)), nn.ConstantPad2d(1, 0.25)
        self.rep, self.circ = nn.ReplicationPad2d(1), nn.CircularPad2d((0, 1, 1, 0))
        self.c = nn.Conv2d(4, 4, 3)
        self.fc1, self.bn1d, self.fc2 = nn.Linear(4 * 4 * 4, 12), nn.BatchNorm1d(12), nn.Linear(12, 5)

    def forward(self, x):
        y = self.a(x) - self.b(x)  # 8x8
        y = torch.add(y, self.b(x), alpha=-0.5)
        y = -self.const(self.zero(y))  # 11x9 -> 13x11
        y = self.c(self.rep(y))  # 15x13 -> 13x11
        y = F.pad(self.circ(y), (-2, -1, 0, -4), "constant", 0.5)  # crop to 10x9
        y = y[..., 1::3, ::2] + 2.0  # 3x5
        y = F.pad(y, (0, -1, 1, 0), value=-1.0)  # 4x4
        return self.fc2(self.bn1d(self.fc1(torch.flatten(y, 1)))) / 4.0


def test_arithmetic_padding_and_slicing_forms():
    plan, _, _ = check(Forms(), tol=1e-5)
    assert kinds(plan).count("add") == 2  # a - b, torch.add(.., alpha=-0.5); every other form folds


class Bad(nn.Module):
    def __init__(self, what: str):
        super().__init__()
        self.what, self.conv = what, nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if self.what == "view_inplace":
            v = y.view(y.size(0), -1)
            y.relu_()  # changes v, which is read below
            return v + 0.0
        if self.what == "not_logits":
            return y
        if self.what == "batch_mix":
            return y.view(1, -1)
        return y.flatten(1)


@pytest.mark.parametrize("what, pattern", [
    ("view_inplace", r"method .relu_\(\) \(node relu_\).*the view view reads later"),
    ("not_logits", r"the output must be logits"),
    ("batch_mix", r"mixes the images of a batch"),
])
def test_more_refusals(what, pattern):
    with pytest.raises(CompileError, match=pattern):
        compile(Bad(what).eval(), calibration={}, preset="test", image_size=(8, 8))

"""ckksnet.inputs.as_images: every accepted image form, and the specific error for each bad one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ckksnet.errors import InputError, NonFiniteError, RangeError, ShapeError
from ckksnet.inputs import as_images

RNG = np.random.default_rng(0)
U8 = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
F64 = RNG.random((2, 3, 32, 32))


def _with(value: float, dtype=np.float64, shape=(3, 32, 32)) -> np.ndarray:
    x = np.full(shape, 0.5, dtype=dtype)
    x[0, 0, 1] = value
    return x


GOOD = [  # (id, images, channels, expected float64 NCHW, single)
    ("uint8 HWC", U8[0], 3, U8[:1].transpose(0, 3, 1, 2) / 255.0, True),
    ("uint8 NHWC", U8, 3, U8.transpose(0, 3, 1, 2) / 255.0, False),
    ("float64 CHW", F64[0], 3, F64[:1], True),
    ("float64 NCHW", F64, 3, F64, False),
    ("float32 NCHW", F64.astype(np.float32), 3, F64.astype(np.float32).astype(np.float64), False),
    ("float16 CHW", F64[0].astype(np.float16), 3, F64[:1].astype(np.float16).astype(np.float64), True),
    ("longdouble CHW", F64[0].astype(np.longdouble), 3, F64[:1], True),
    ("nested list", F64[0].tolist(), 3, F64[:1], True),
    ("list of uint8 images", [U8[0], U8[1]], 3, U8.transpose(0, 3, 1, 2) / 255.0, False),
    ("torch float32", torch.tensor(F64, dtype=torch.float32), 3,
     F64.astype(np.float32).astype(np.float64), False),
    ("torch requires_grad", torch.tensor(F64[0], requires_grad=True), 3, F64[:1], True),
    ("torch uint8 HWC", torch.from_numpy(U8[0]), 3, U8[:1].transpose(0, 3, 1, 2) / 255.0, True),
    ("bounds 0 and 1", np.stack([np.zeros((3, 32, 32)), np.ones((3, 32, 32))]), 3,
     np.stack([np.zeros((3, 32, 32)), np.ones((3, 32, 32))]), False),
    ("negative zero", np.full((3, 32, 32), -0.0), 3, np.zeros((1, 3, 32, 32)), True),
    ("gray uint8 HW", U8[0, :, :, 0], 1, U8[:1, None, :, :, 0] / 255.0, True),
    ("gray uint8 NHW", U8[:, :, :, 0], 1, U8[:, None, :, :, 0] / 255.0, False),
    ("gray uint8 HW1", U8[0, :, :, :1], 1, U8[:1, None, :, :, 0] / 255.0, True),
    ("gray float HW", F64[0, 0], 1, F64[:1, :1], True),
    ("gray float NHW", F64[:, 0], 1, F64[:, :1], False),
    ("gray float 1HW is one image", F64[0, :1], 1, F64[:1, :1], True),
    ("gray float N1HW", F64[:, :1], 1, F64[:, :1], False),
]


@pytest.mark.parametrize("images, channels, want, single", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_accepted_images(images, channels, want, single):
    x, one = as_images(images, channels, 32, 32)
    assert x.dtype == np.float64 and x.flags.c_contiguous and one is single
    assert x.shape == want.shape and np.array_equal(x, want)


def test_result_is_a_copy():
    src = F64.copy()
    x, _ = as_images(src, 3, 32, 32)
    x[:] = 0
    assert np.array_equal(src, F64)


BAD = [  # (id, images, channels, exact error class, text in the message)
    # shapes
    ("HW for 3 channels", F64[0, 0], 3, ShapeError, "accepted"),
    ("rank 2 wrong", np.zeros((3, 32)), 3, ShapeError, "accepted"),
    ("rank 5", F64[None], 3, ShapeError, "(N, 3, 32, 32)"),
    ("scalar", np.float64(0.5), 3, ShapeError, "accepted"),
    ("float HWC", F64[0].transpose(1, 2, 0), 3, ShapeError, "channel-last"),
    ("float NHWC", F64.transpose(0, 2, 3, 1), 3, ShapeError, "channel-last"),
    ("uint8 CHW", U8[0].transpose(2, 0, 1), 3, ShapeError, "channel-first"),
    ("4 channels float", np.zeros((4, 32, 32)), 3, ShapeError, "(3, 32, 32)"),
    ("4 channels uint8", np.zeros((32, 32, 4), np.uint8), 3, ShapeError, "(32, 32, 3)"),
    ("wrong height", np.zeros((3, 31, 32)), 3, ShapeError, "accepted"),
    ("wrong width uint8", np.zeros((2, 32, 33, 3), np.uint8), 3, ShapeError, "accepted"),
    ("empty float batch", np.zeros((0, 3, 32, 32)), 3, ShapeError, "empty batch"),
    ("empty uint8 batch", np.zeros((0, 32, 32, 3), np.uint8), 3, ShapeError, "empty batch"),
    ("empty gray batch", np.zeros((0, 32, 32)), 1, ShapeError, "empty batch"),
    ("empty list", [], 3, ShapeError, "accepted"),
    ("ragged list", [[0.5, 0.5], [0.5]], 3, ShapeError, "rectangular"),
    ("gray with 3 channels asked", np.zeros((5, 32, 32)), 3, ShapeError, "accepted"),
    ("rgb with 1 channel asked", U8[0], 1, ShapeError, "grayscale"),
    # non-finite
    ("nan", _with(np.nan), 3, NonFiniteError, "NaN"),
    ("inf", _with(np.inf), 3, NonFiniteError, "infinite"),
    ("-inf", _with(-np.inf), 3, NonFiniteError, "infinite"),
    ("float32 nan", _with(np.nan, np.float32), 3, NonFiniteError, "NaN"),
    ("float16 inf", _with(np.inf, np.float16), 3, NonFiniteError, "infinite"),
    ("nan in batch", _with(np.nan, shape=(2, 3, 32, 32)), 3, NonFiniteError, "NaN"),
    ("torch nan", torch.tensor(_with(np.nan)), 3, NonFiniteError, "NaN"),
    # range
    ("below 0", _with(-0.1), 3, RangeError, "[0, 1]"),
    ("tiny negative", _with(-1e-12), 3, RangeError, "[0, 1]"),
    ("above 1", _with(1.0001), 3, RangeError, "[0, 1]"),
    ("0..255 as float", np.full((3, 32, 32), 255.0), 3, RangeError, "uint8"),
    ("huge", _with(1e300), 3, RangeError, "[0, 1]"),
    # not real numbers, or integers other than uint8
    ("complex", F64[0].astype(complex), 3, InputError, "complex"),
    ("complex, zero imaginary part", np.zeros((3, 32, 32), np.complex64), 3, InputError, "imaginary"),
    ("bool", np.zeros((3, 32, 32), bool), 3, InputError, "bool"),
    ("object", np.zeros((3, 32, 32), object), 3, InputError, "object"),
    ("strings", np.full((3, 32, 32), "a"), 3, InputError, "strings"),
    ("bytes", np.full((3, 32, 32), b"a"), 3, InputError, "bytes"),
    ("a string", "image.png", 3, InputError, "strings"),
    ("None", None, 3, InputError, "object"),
    ("dict", {"image": F64[0]}, 3, InputError, "object"),
    ("int64", np.zeros((32, 32, 3), np.int64), 3, InputError, "uint8"),
    ("int8", np.zeros((32, 32, 3), np.int8), 3, InputError, "uint8"),
    ("uint16", np.zeros((32, 32, 3), np.uint16), 3, InputError, "uint8"),
    ("list of ints", U8[0].astype(int).tolist(), 3, InputError, "uint8"),
    ("datetime", np.zeros((3, 32, 32), "datetime64[s]"), 3, InputError, "dates"),
    ("masked array", np.ma.masked_array(F64[0], mask=F64[0] > 0.5), 3, InputError, "masked"),
    ("torch complex", torch.zeros(3, 32, 32, dtype=torch.complex64), 3, InputError, "complex"),
    ("torch bool", torch.zeros(3, 32, 32, dtype=torch.bool), 3, InputError, "bool"),
]


@pytest.mark.parametrize("images, channels, error, text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_refused_images(images, channels, error, text):
    with pytest.raises(error) as info:
        as_images(images, channels, 32, 32)
    assert info.type is error  # the specific class, not a relative
    assert text in str(info.value)


def test_shape_error_lists_accepted_shapes():
    with pytest.raises(ShapeError) as info:
        as_images(np.zeros((7, 7)), 3, 32, 32)
    text = str(info.value)
    for form in ("(7, 7)", "uint8 (H, W, C) = (32, 32, 3)", "(N, 32, 32, 3)", "float (C, H, W) = (3, 32, 32)",
                 "(N, 3, 32, 32)", "[0, 1]"):
        assert form in text


@pytest.mark.parametrize("channels, height, width", [(0, 32, 32), (3, -1, 32), (3, 32, True), (3, 32, 2.0)])
def test_bad_geometry_arguments(channels, height, width):
    with pytest.raises(InputError, match="positive integer"):
        as_images(F64[0], channels, height, width)


def test_all_errors_are_ckksnet_value_errors():
    from ckksnet.errors import CkksnetError

    for _, images, channels, error, _ in BAD:
        with pytest.raises(CkksnetError):
            as_images(images, channels, 32, 32)
        assert issubclass(error, ValueError)

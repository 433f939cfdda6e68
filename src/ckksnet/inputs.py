"""What an image may be: the one place that accepts or refuses images handed to ckksnet.

:func:`as_images` turns what a caller passes into float64 NCHW pixels in [0, 1], or raises:

* :class:`~ckksnet.errors.InputError` for data that is not real numbers (complex, bool, object,
  strings, dates, masked arrays) or integers other than uint8;
* :class:`~ckksnet.errors.ShapeError` for a wrong rank, size or channel count, or an empty batch;
  its message lists the accepted shapes;
* :class:`~ckksnet.errors.NonFiniteError` for NaN or infinity in float pixels;
* :class:`~ckksnet.errors.RangeError` for float pixels outside [0, 1].

Nothing is clipped, rounded or cast silently.
"""
from __future__ import annotations

import sys

import numpy as np

from ckksnet.errors import InputError, NonFiniteError, RangeError, ShapeError

__all__ = ["as_images", "accepted_shapes"]


def accepted_shapes(channels: int, height: int, width: int) -> str:
    """The image shapes :func:`as_images` accepts, in words (used in its error messages)."""
    c, h, w = channels, height, width
    text = (f"uint8 (H, W, C) = ({h}, {w}, {c}) or (N, {h}, {w}, {c}) with values 0..255, "
            f"or float (C, H, W) = ({c}, {h}, {w}) or (N, {c}, {h}, {w}) with values in [0, 1]")
    if channels == 1:
        text += f"; grayscale ({h}, {w}) or (N, {h}, {w}) of either dtype"
    return text


def _to_array(images: object) -> np.ndarray:
    """``images`` as a numpy array without changing its values.

    Raises InputError for masked arrays and objects numpy cannot turn into an array, ShapeError
    for ragged nested sequences.
    """
    if isinstance(images, np.ma.MaskedArray):
        raise InputError("masked arrays are not accepted as images: fill the masked pixels first")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()  # exact: every bfloat16 is a float32
        images = t.numpy()
    try:
        return np.asarray(images)
    except ValueError as exc:  # ragged nested lists
        raise ShapeError(f"images are not a rectangular array ({exc})") from exc
    except TypeError as exc:
        raise InputError(f"cannot read {type(images).__name__} as an image array ({exc})") from exc


def _check_dtype(x: np.ndarray) -> None:
    """Accept uint8 and real floats; raise InputError for every other dtype, naming it."""
    kind = x.dtype.kind
    if x.dtype == np.uint8 or kind == "f":
        return
    if kind == "c":
        raise InputError(f"images are complex ({x.dtype}); pixels must be real: "
                         "an imaginary part is never dropped silently")
    if kind in "iu":
        raise InputError(f"integer images must be uint8 (0..255), not {x.dtype}; "
                         "convert them explicitly, or pass float pixels in [0, 1]")
    names = {"b": "bool", "O": "Python objects", "U": "strings", "S": "bytes", "V": "raw records",
             "M": "dates", "m": "time spans"}
    raise InputError(f"images must be uint8 or a real float dtype, not {x.dtype} "
                     f"({names.get(kind, 'non-numeric')})")


def _layout(x: np.ndarray, channels: int, height: int, width: int) -> tuple[np.ndarray, bool]:
    """Reshape to NCHW (still in the input dtype); returns (array, single image given).

    Raises ShapeError naming the accepted shapes when the array fits none of them.
    """
    c, h, w = channels, height, width
    if x.dtype == np.uint8:
        forms = {3: [((h, w, c), True)], 4: [((h, w, c), False)]}
    else:
        forms = {3: [((c, h, w), True)], 4: [((c, h, w), False)]}
    if channels == 1:
        forms.setdefault(2, []).append(((h, w), True))
        forms.setdefault(3, []).append(((h, w), False))
    for tail, single in forms.get(x.ndim, []):
        if x.shape[-len(tail):] == tail:
            y = x[None] if single else x
            if len(tail) == 2:
                y = y[:, None]
            elif x.dtype == np.uint8:
                y = np.moveaxis(y, -1, 1)
            if y.shape[0] == 0:
                raise ShapeError(f"empty batch of images {x.shape}; accepted: "
                                 + accepted_shapes(c, h, w))
            return y, single
    raise ShapeError(f"images of shape {x.shape} and dtype {x.dtype} do not fit; accepted: "
                     + accepted_shapes(c, h, w) + _hint(x, c, h, w))


def _hint(x: np.ndarray, channels: int, height: int, width: int) -> str:
    """A hint when the array has the other layout (HWC floats, CHW uint8)."""
    if x.ndim not in (3, 4):
        return ""
    if x.dtype != np.uint8 and x.shape[-3:] == (height, width, channels):
        return " (this looks channel-last: float images are (C, H, W); transpose them)"
    if x.dtype == np.uint8 and x.shape[-3:] == (channels, height, width):
        return " (this looks channel-first: uint8 images are (H, W, C); transpose them)"
    return ""


def _check_values(x: np.ndarray) -> None:
    """Float pixels must be finite and in [0, 1]: NonFiniteError, RangeError otherwise."""
    finite = np.isfinite(x)
    if not finite.all():
        nan = int(np.isnan(x).sum())
        raise NonFiniteError(f"images hold {nan} NaN and {x.size - int(finite.sum()) - nan} "
                             "infinite pixel value(s)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise RangeError(f"float pixel values must lie in [0, 1], got {lo:.6g}..{hi:.6g} "
                         "(images with values 0..255 must have dtype uint8)")


def as_images(images: object, channels: int, height: int,
              width: int) -> tuple[np.ndarray, bool]:
    """Validate images and return them as float64 (N, C, H, W) in [0, 1], and whether one was given.

    Accepted (numpy arrays, nested sequences or CPU torch tensors):

    * uint8 (H, W, C) or (N, H, W, C), values 0..255 (divided by 255);
    * any real float dtype, (C, H, W) or (N, C, H, W), values in [0, 1];
    * when ``channels == 1`` also grayscale (H, W) or (N, H, W) of either dtype. A 3-D array
      that also fits the (C, H, W) / (H, W, C) form is taken as one image.

    The result is always a new array. Raises InputError (complex, bool, object, string, other
    integer dtypes, masked arrays; bad ``channels``/``height``/``width``), ShapeError (wrong
    rank, size or channel count, empty batch, ragged input; the message lists the accepted
    shapes), NonFiniteError (NaN or infinity) and RangeError (float pixels outside [0, 1]).
    """
    for name, value in (("channels", channels), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be a positive integer, not {value!r}")
    x = _to_array(images)
    _check_dtype(x)
    x, single = _layout(x, int(channels), int(height), int(width))
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float64) / 255.0, single
    _check_values(x)
    return np.array(x, dtype=np.float64), single

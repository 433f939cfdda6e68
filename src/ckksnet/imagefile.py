"""Image files for the command line: PNG / JPEG (read with Pillow) and ``.npy`` arrays.

:func:`read_image` returns pixels in a form :func:`ckksnet.inputs.as_images` accepts (uint8
(H, W, C), or (H, W) for one channel; a ``.npy`` file's array as stored), after checking the
size and channel count a plan or model expects. Nothing is converted silently: a PNG with an
alpha channel, a grayscale image for an RGB model, or a wrong size is an error naming what was
found and what is expected; ``resize`` resizes a PNG / JPEG explicitly and says so: "crop"
(``True``) keeps the aspect ratio and takes the centre (Pillow's ``ImageOps.fit``), "stretch"
scales each axis to the model's size.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ckksnet.errors import DataError, InputError, ShapeError
from ckksnet.inputs import as_images

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Pillow modes read as they are, by channel count ("P": palette indices into RGB colours, read
#: as RGB; never with transparency, which would be dropped)
_MODES = {3: ("RGB", "P"), 1: ("L",)}


RESIZE_MODES = ("crop", "stretch")


def read_image(path: str | os.PathLike, channels: int, height: int, width: int,
               resize: bool | str = False) -> tuple[np.ndarray, str | None]:
    """One image file -> (pixels, note). ``note`` says how the image was resized (None if not).

    Raises :class:`InputError` (a file type other than PNG, JPEG, .npy; a colour mode that does
    not have ``channels`` channels), :class:`ShapeError` (a size other than ``height`` x ``width``
    without ``resize``; a .npy array of another shape), :class:`DataError` (a missing or
    unreadable file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, channels, height, width, resize), None
    if suffix in PIL_SUFFIXES:
        return _read_pil(path, channels, height, width, resize)
    raise InputError(f"{path}: unsupported image file type {path.suffix!r}; use PNG, JPEG or .npy")


def _read_pil(path: Path, channels: int, height: int, width: int, resize) -> tuple[np.ndarray, str | None]:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # unreadable or damaged
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    if im.mode not in _MODES.get(channels, ()) or (im.mode == "P" and "transparency" in im.info):
        raise InputError(f"{path}: {_describe_mode(im)}; the model expects {channels} channel(s) "
                         f"({'RGB' if channels == 3 else 'grayscale L' if channels == 1 else 'unsupported'})")
    if im.mode == "P":
        im = im.convert("RGB")  # exact: the palette's colours
    note = None
    if im.size != (width, height):
        if not resize:
            raise ShapeError(f"{path} is {im.size[0]}x{im.size[1]} pixels; the model expects "
                             f"{width}x{height} (pass --resize to resize it)")
        mode = "crop" if resize is True else resize
        if mode not in RESIZE_MODES:
            raise InputError(f"resize mode {resize!r} unknown; use one of {', '.join(RESIZE_MODES)}")
        same_shape = im.size[0] * height == im.size[1] * width  # nothing to crop
        how = "resized" if same_shape else \
            "centre-cropped to the model's aspect ratio and resized" if mode == "crop" else "stretched"
        note = f"{path}: {how} from {im.size[0]}x{im.size[1]} to {width}x{height} pixels (Lanczos)"
        im = (ImageOps.fit(im, (width, height), Image.Resampling.LANCZOS) if mode == "crop"
              else im.resize((width, height), Image.Resampling.LANCZOS))
    return np.asarray(im, dtype=np.uint8), note


def _describe_mode(im) -> str:
    names = {"RGBA": "RGB with alpha, 4 channels", "LA": "grayscale with alpha, 2 channels",
             "L": "grayscale, 1 channel", "RGB": "RGB, 3 channels", "CMYK": "CMYK, 4 channels",
             "P": "palette with transparency", "1": "black and white, 1 bit"}
    return f"colour mode {im.mode} ({names.get(im.mode, 'not supported')})"


def _read_npy(path: Path, channels: int, height: int, width: int, resize: bool) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:  # not an .npy file, or one holding Python objects
        raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
    try:
        _, single = as_images(arr, channels, height, width)
    except ShapeError as exc:
        hint = " (--resize applies to PNG and JPEG files only)" if resize else ""
        raise ShapeError(f"{path}: {exc}{hint}") from exc
    if not single:
        raise ShapeError(f"{path} holds {arr.shape[0]} images; give one image per file")
    return arr

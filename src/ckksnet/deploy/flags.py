"""Command-line flags shared by several ``ckksnet`` commands, declared once.

``add(parser, "json", "checkpoint", ...)`` adds the named flags; :func:`sign_tables` turns the
parsed ``--alpha``/``--eps-bits``/``--relu-sign`` into the compiler's typed
:class:`~ckksnet.compiler.checkpoints.SignTables`. Importing this module imports neither torch
nor OpenFHE (``ckksnet --help`` stays fast).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ckksnet.errors import InputError


def relu_sign_arg(text: str) -> tuple[str, tuple[int, int]]:
    """'PATTERN=ALPHA/EPS_BITS' (argparse type): a glob over ReLU step names and the sign table."""
    pattern, sep, table = text.partition("=")
    alpha, slash, eps = table.partition("/")
    if not (sep and slash and pattern and alpha.isdigit() and eps.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATTERN=ALPHA/EPS_BITS, e.g. 'layers.*.relu1=10/7'")
    return pattern, (int(alpha), int(eps))


#: name -> (flags, keyword arguments of add_argument)
FLAGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "json": (("--json",), {"action": "store_true", "help": "print the report as JSON"}),
    "checkpoint": (("--checkpoint",), {"help": "checkpoint folder, or a bundled one by name (resnet20, the default)"}),
    "preset": (("--preset",), {"default": "secure",
                               "help": "CKKS parameter preset: secure (128-bit, default) or test (INSECURE)"}),
    "backend": (("--backend",), {"default": "openfhe", "metavar": "NAME",
                                 "help": "the backend the plan runs on, by name (default openfhe; 'cleartext' "
                                         "encrypts nothing: for testing a pipeline; one outside ckksnet: name its "
                                         "module in $CKKSNET_BACKEND_MODULES)"}),
    "data": (("--data",), {"help": "CIFAR-10 location (default: $CKKSNET_DATA or ../shared/data)"}),
    "alpha": (("--alpha",), {"type": int, "default": 13,
                             "help": "ReLU sign precision in bits (shipped tables: 6..13; default 13)"}),
    "eps-bits": (("--eps-bits",), {"type": int, "default": 9,
                                   "help": "the sign is accurate beyond 2^-EPS_BITS (default 9)"}),
    "relu-sign": (("--relu-sign",), {"action": "append", "type": relu_sign_arg, "default": [],
                                     "metavar": "PATTERN=ALPHA/EPS_BITS",
                                     "help": "sign table for the ReLUs whose step names match PATTERN "
                                             "(repeatable), e.g. 'layers.*.relu1=10/7' (the depth-10 table)"}),
    "skip-memory-check": (("--skip-memory-check",), {
        "action": "store_true",
        "help": "do not refuse to start when the keys need more memory than this process may take "
                "(RLIMIT_AS, cgroup memory.max, MemAvailable); also CKKSNET_SKIP_MEMORY_CHECK=1"}),
    "image-size": (("--image-size",), {"type": int, "help": "the model's input is N x N pixels (default: the "
                                                           "checkpoint's recorded size, else 32)"}),
    "model": (("--model",), {"metavar": "MODULE:FACTORY",
                             "help": "your own model instead of a checkpoint: a function or class in an importable "
                                     "module (on PYTHONPATH or in the current directory; or path/to/file.py:FACTORY), "
                                     "called with no arguments, that returns the torch.nn.Module"}),
    "weights": (("--weights",), {"metavar": "STATE_DICT",
                                 "help": "with --model: the weights, a file written by "
                                         "torch.save(model.state_dict(), path), or a training checkpoint "
                                         "holding them ({'model_state_dict': ..., 'epoch': ...})"}),
    "trust-pickle": (("--trust-pickle",), {
        "action": "store_true",
        "help": "with --weights: also read a file of pickled Python objects (a whole model saved with "
                "torch.save(model)); unpickling runs code the file names: only for files you trust"}),
    "input-shape": (("--input-shape",), {"type": int, "nargs": 3, "metavar": ("C", "H", "W"),
                                         "help": "the model's input: channels, height, width (needed where the "
                                                 "model has no convolution to tell its channels, e.g. an MLP)"}),
    "calibration": (("--calibration",), {"metavar": "IMAGES",
                                         "help": "images to measure each ReLU's input range on (required with "
                                                 "--model): an .npz or .npy array (uint8 N,H,W,C or float N,C,H,W "
                                                 "in [0, 1]) or a folder of PNG/JPEG/.npy images of the model's size"}),
    "classes": (("--classes",), {"metavar": "NAMES",
                                 "help": "the outputs' class names, in order: comma-separated (cat,dog,...) or a "
                                         "text file with one name a line (default: CIFAR-10's names for a "
                                         "checkpoint with 10 outputs; for --model the class indices 0, 1, ...)"}),
    "resize": (("--resize",), {"nargs": "?", "const": "crop", "choices": ("crop", "stretch"), "default": False,
                               "help": "resize PNG/JPEG images to the model's size: crop (default: keep the "
                                       "aspect ratio, take the centre) or stretch"}),
    "threads": (("--threads",), {"metavar": "N",
                                 "help": "threads to compute with (OpenFHE's OpenMP threads, torch's): default "
                                         "$CKKSNET_THREADS, else $OMP_NUM_THREADS, else the cores this process may "
                                         "use (affinity, cgroup quota) less the load of other work at start"}),
}
#: the flags of a compiled plan's sign tables, together
SIGN_TABLES = ("alpha", "eps-bits", "relu-sign")
#: where a command's model comes from: a checkpoint, or a factory with its weights and input shape
MODEL = ("checkpoint", "model", "weights", "trust-pickle", "input-shape", "image-size")


def add(parser: argparse.ArgumentParser, *names: str, **overrides) -> None:
    """Add the shared flags ``names`` to ``parser``; ``overrides`` maps a name (with _ for -) to
    keyword arguments that replace the shared ones (e.g. ``preset={"default": "test"}``)."""
    for name in names:
        flags, kwargs = FLAGS[name]
        parser.add_argument(*flags, **{**kwargs, **overrides.get(name.replace("-", "_"), {})})


def model_source(args: argparse.Namespace) -> dict:
    """The parsed model flags (:data:`MODEL` and ``--calibration``) as keyword arguments of
    :func:`ckksnet.compiler.checkpoints.compile_checkpoint`."""
    return {"checkpoint": args.checkpoint, "factory": args.model, "weights": args.weights,
            "input_shape": tuple(args.input_shape) if args.input_shape else None, "image_size": args.image_size,
            "calibration": args.calibration, "trust_pickle": getattr(args, "trust_pickle", False)}


def class_names(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The parsed ``--classes``: names from a text file (one a line) or a comma-separated list;
    None where not given."""
    text = getattr(args, "classes", None)
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [name.strip() for name in text.split(",")]
    if not names or not all(names):
        raise InputError(f"--classes {text!r}: expected names separated by commas (cat,dog,bird) or a text file "
                         "with one name a line, with no empty name")
    if len(set(names)) != len(names):
        raise InputError(f"--classes {text!r}: names repeat ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    return tuple(names)


def default_classes(args: argparse.Namespace, outputs: int) -> tuple[str, ...]:
    """The class names of a command's model: ``--classes``; else CIFAR-10's for a checkpoint with
    10 outputs; else (``--model``, or another count) the indices 0, 1, ... . InputError where
    ``--classes`` names another count than the model's outputs."""
    names = class_names(args)
    if names is not None:
        if len(names) != outputs:
            raise InputError(f"--classes gives {len(names)} name(s) but the model has {outputs} outputs")
        return names
    if outputs == 10 and not getattr(args, "model", None):
        from ckksnet.compiler.phases import CIFAR10_CLASSES

        return CIFAR10_CLASSES
    return tuple(str(i) for i in range(outputs))


def sign_tables(args: argparse.Namespace):
    """The parsed sign-table flags as the compiler's typed SignTables."""
    from ckksnet.compiler.checkpoints import SignTables  # torch: only when a command compiles

    return SignTables(args.alpha, args.eps_bits, list(args.relu_sign))

"""Turning a trained model (or a run's latest state) into a checkpoint with full metadata."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from ckksnet.compiler.calibrate import calibrate
from ckksnet.data import Split
from ckksnet.errors import DataError
from ckksnet.models import save_checkpoint
from ckksnet.models.checkpoint import check_config_fits, check_state
from ckksnet.models.poly import activation_degree, to_polynomial
from ckksnet.models.resnet import ResNetCifar
from ckksnet.training.train import TrainConfig, evaluate


def export_checkpoint(model: ResNetCifar, cfg: TrainConfig, history: list[dict], train_split: Split,
                      test_split: Split, out: str | os.PathLike, command: str,
                      calibration_images: int = 10_000, note: str | None = None) -> tuple[Path, dict]:
    """Evaluate, calibrate every ReLU and write ``model.pt`` + ``model.json`` (with its checksum)
    into ``out``. Raises DataError if the metadata cannot be written as a loadable checkpoint."""
    result = evaluate(model, test_split)
    # taken from each class in turn: the CIFAR-10 copies are class-sorted, and a prefix would
    # calibrate the ReLUs on two classes only
    calib = calibrate(model, train_split.stratified(calibration_images).images)
    meta = {
        "architecture": f"ResNet-{6 * cfg.blocks + 2} (CIFAR, option-A shortcut), widths {list(cfg.widths)}",
        "shortcut": "A: stride-2 identity, channels zero-padded (lowered to a fixed 1x1 conv)",
        "trained_on": train_split.source,
        "training": {"command": command, "seed": cfg.seed, "config": asdict(cfg),
                     "epochs_done": len(history), "history": history},
        "test": result,
        "calibration": {"images": min(calibration_images, len(train_split)), "split": "train (each class in turn)",
                        "relus": calib},
    }
    if note:
        meta["note"] = note
    return save_checkpoint(model, meta, out), result


def _read_run_state(path: Path) -> dict:
    """``state.pt`` loaded without running arbitrary code; DataError if missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: run state is missing (train a run there first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on damaged files
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DataError(f"{path}: not a readable run state, damaged or not from ckksnet train "
                        f"({type(exc).__name__}: {reason})") from exc
    kinds = {"config": dict, "model": dict, "history": list}
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in kinds.items()):
        raise DataError(f"{path}: expected a dict with config (dict), model (dict) and history (list)")
    return state


def _run_config(config: dict, where: str) -> TrainConfig:
    """The TrainConfig of a saved run; DataError naming the field for unknown or bad entries."""
    try:
        cfg = TrainConfig(**{**config, "widths": tuple(config.get("widths", ()))})
    except TypeError as exc:
        raise DataError(f"{where}: run config does not fit TrainConfig ({exc})") from exc
    for name in ("blocks", "epochs"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{where}: config.{name} must be a positive integer, got {value!r}")
    if len(cfg.widths) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                       for w in cfg.widths):
        raise DataError(f"{where}: config.widths must be three positive integers, got {cfg.widths!r}")
    return cfg


def load_run_state(run_dir: str | os.PathLike) -> tuple[ResNetCifar, TrainConfig, list[dict]]:
    """The model, config and history saved by :func:`ckksnet.training.train` in ``run_dir``.

    Raises DataError for a missing or unreadable ``state.pt``, a config that does not fit
    :class:`TrainConfig`, or weights that do not fit the config (names, shapes, dtypes, NaN).
    """
    path = Path(run_dir) / "state.pt"
    state = _read_run_state(path)
    cfg = _run_config(state["config"], str(path))
    fc = state["model"].get("fc.weight")
    classes = fc.shape[0] if isinstance(fc, torch.Tensor) and fc.ndim == 2 and fc.shape[0] > 0 else 10
    check_config_fits({"blocks": cfg.blocks, "widths": list(cfg.widths), "num_classes": classes},
                      state["model"], str(path))
    model = ResNetCifar(cfg.blocks, cfg.widths, classes)
    if cfg.activation != "relu":  # a polynomial run: its coefficients and bounds come with the state
        to_polynomial(model, activation_degree(cfg.activation))
    check_state(model.state_dict(), state["model"], str(path))
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state["history"]

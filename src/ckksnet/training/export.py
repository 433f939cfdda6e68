"""Turning a trained model (or a run's latest state) into a checkpoint with full metadata."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from ckksnet.data import Split
from ckksnet.models import save_checkpoint
from ckksnet.models.resnet import ResNetCifar
from ckksnet.training.calibrate import calibrate
from ckksnet.training.train import TrainConfig, evaluate


def export_checkpoint(model: ResNetCifar, cfg: TrainConfig, history: list[dict], train_split: Split,
                      test_split: Split, out: str | os.PathLike, command: str,
                      calibration_images: int = 10_000, note: str | None = None) -> tuple[Path, dict]:
    """Evaluate, calibrate every ReLU and write ``model.pt`` + ``model.json`` into ``out``."""
    result = evaluate(model, test_split)
    calib = calibrate(model, train_split.images[:calibration_images])
    meta = {
        "architecture": f"ResNet-{6 * cfg.blocks + 2} (CIFAR, option-A shortcut), widths {list(cfg.widths)}",
        "shortcut": "A: stride-2 identity, channels zero-padded (lowered to a fixed 1x1 conv)",
        "trained_on": train_split.source,
        "training": {"command": command, "seed": cfg.seed, "config": asdict(cfg),
                     "epochs_done": len(history), "history": history},
        "test": result,
        "calibration": {"images": min(calibration_images, len(train_split)), "split": "train",
                        "relus": calib},
    }
    if note:
        meta["note"] = note
    return save_checkpoint(model, meta, out), result


def load_run_state(run_dir: str | os.PathLike) -> tuple[ResNetCifar, TrainConfig, list[dict]]:
    """The model, config and history saved by :func:`ckksnet.training.train` in ``run_dir``."""
    state = torch.load(Path(run_dir) / "state.pt", map_location="cpu", weights_only=False)
    cfg = TrainConfig(**{**state["config"], "widths": tuple(state["config"]["widths"])})
    model = ResNetCifar(cfg.blocks, cfg.widths, 10)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state["history"]

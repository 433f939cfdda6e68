"""Checkpoints: a torch state dict (``model.pt``) beside a JSON metadata file (``model.json``).

The metadata holds the architecture config (which includes the normalisation constants), the
calibration figures of every ReLU, how the model was trained and its measured accuracy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ckksnet.errors import DataError

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled" / "resnet20"


def save_checkpoint(model: torch.nn.Module, meta: dict, folder: str | os.PathLike) -> Path:
    """Write ``model.pt`` and ``model.json`` into ``folder``; ``meta`` gains the model config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    meta = {"config": model.config, **meta}
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_checkpoint(folder: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from ``folder`` in eval mode; returns (model, metadata)."""
    from ckksnet.models.resnet import build

    folder = Path(folder)
    for name in ("model.pt", "model.json"):
        if not (folder / name).exists():
            raise DataError(f"{folder}: checkpoint file {name} is missing")
    try:
        meta = json.loads((folder / "model.json").read_text())
        model = build(meta["config"])
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    except (json.JSONDecodeError, KeyError, RuntimeError, OSError) as exc:
        raise DataError(f"{folder}: not a valid ckksnet checkpoint ({exc})") from exc
    return model.eval(), meta


def load_bundled() -> tuple[torch.nn.Module, dict]:
    """The trained ResNet-20 shipped with the package (see its ``model.json`` for provenance)."""
    return load_checkpoint(BUNDLED_DIR)

"""``ckksnet fidelity``: the bundled (or a given) model on the CIFAR-10 test split, three ways,
with plots. See :func:`ckksnet.fidelity.evaluate` for the figures."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ckksnet.core.text import count
from ckksnet.data import load_cifar10
from ckksnet.fidelity import bundled_noise, evaluate, profile, summarize


def fidelity_report(twin: int = 10_000, encrypted: int = 0, preset: str = "secure", data: str | None = None,
                    checkpoint: str | None = None, signs=None,
                    state: str | os.PathLike | None = None, noise: bool = True,
                    plots: str | os.PathLike | None = None, alphas: list[int] | None = None,
                    sweep_images: int = 1000, progress: bool = True,
                    profile_from: str | os.PathLike | None = None) -> dict:
    """Run the comparison; ``alphas``: also the twin's fidelity for each ReLU alpha (first
    ``sweep_images`` images); ``plots``: a folder for the PNG figures; ``profile_from``: a saved
    run report (e.g. benchmarks/resnet20_last.json) for the profile when no image runs encrypted;
    ``signs``: the ReLUs' sign tables (:class:`~ckksnet.compiler.checkpoints.SignTables`; default
    alpha 13, eps 2^-9)."""
    from ckksnet.compiler.checkpoints import SignTables, compile_checkpoint
    signs = signs or SignTables()
    alpha, eps_bits = signs.alpha, signs.eps_bits
    split = load_cifar10("test", data)
    net, model, meta = compile_checkpoint(checkpoint, preset, signs)
    calib = meta["calibration"]["relus"]
    noise_model = bundled_noise(preset) if noise else None
    res = evaluate(net, model, split.images, split.labels, twin, encrypted, state, noise_model, progress)
    res.update(source=split.source, checkpoint=checkpoint or "bundled", alpha=alpha, eps_bits=eps_bits,
               noise_model=res["noise_model"] if noise_model or not noise else f"none shipped for {preset}: exact twin")
    if res["profile"] is None and profile_from:  # no encrypted image ran now: a saved run report
        saved = json.loads(Path(profile_from).read_text())
        res["profile"] = profile(saved["report"], {"from": str(profile_from), "key_memory_gb": saved.get("key_memory_gb")})
    if alphas:
        res["alpha_sweep"] = alpha_sweep(model, calib, split, preset, alphas, eps_bits, sweep_images,
                                         noise_model, progress)
    errors = res.pop("logit_errors")
    if plots:
        res["plots"] = [str(p) for p in make_plots(res, errors, Path(plots))]
    return res


def alpha_sweep(model, calib, split, preset, alphas, eps_bits, n, noise_model, progress) -> list[dict]:
    """The twin's fidelity on the first ``n`` test images for each alpha (uniform over ReLUs)."""
    import torch

    from ckksnet.compiler import compile
    from ckksnet.kernels import ReluStep
    from ckksnet.training.train import to_tensor

    with torch.no_grad():
        plain = model(to_tensor(split.images[:n])).double().numpy()
    out = []
    for a in alphas:
        net = compile(model, calibration=calib, preset=preset, alpha=a, eps_bits=eps_bits)
        twin = np.concatenate([net.twin(split.images[i:min(i + 256, n)], noise=noise_model, seed=i)
                               for i in range(0, n, 256)])
        relu = next(s for s, _, _ in net.steps if isinstance(s, ReluStep))
        out.append({"alpha": a, "degrees": list(relu.relu.sign.degrees), "relu_depth": relu.levels()}
                   | summarize(plain, twin, split.labels[:n]))
        if progress:
            print(f"alpha {a}: {out[-1]['identical_top1']}% identical", flush=True)
    return out


def make_plots(res: dict, errors: dict, folder: Path) -> list[Path]:
    """PNG figures: logit-error histograms, per-layer time, fidelity against alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, vals in (("twin (noise model)", errors["twin"]), ("encrypted", errors["encrypted"])):
        v = np.abs(np.asarray(vals))
        v = v[v > 0]
        if len(v):
            ax.hist(np.log10(v), bins=60, density=True, alpha=0.55, label=f"{name}, {len(v)} logits")
    ax.set_xlabel("log10 |logit - plaintext logit|")
    ax.set_ylabel("density")
    ax.set_title(f"Logit errors, {res['preset']} preset, alpha {res['alpha']}")
    ax.legend()
    paths.append(_save(fig, folder / "fidelity_logit_errors.png"))

    prof = res.get("profile")
    if prof:
        layers = prof["by_layer"]
        fig, ax = plt.subplots(figsize=(12, 4))
        x = np.arange(len(layers))
        boot = np.array([s["bootstrap_seconds"] for s in layers])
        rest = np.array([s["seconds"] for s in layers]) - boot
        ax.bar(x, boot, label="bootstrapping")
        ax.bar(x, rest, bottom=boot, label="kernel (linear / ReLU polynomial / pooling)")
        ax.set_xticks(x, [s["name"] for s in layers], rotation=90, fontsize=7)
        ax.set_ylabel("seconds")
        which = f" (image {prof['image']})" if "image" in prof else ""
        ax.set_title(f"Per-layer time, one encrypted image{which}: {prof['seconds']:.0f} s, "
                     f"{count(prof['bootstraps'], 'bootstrap')}")
        ax.legend()
        paths.append(_save(fig, folder / "fidelity_layer_time.png"))

    sweep = res.get("alpha_sweep")
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        a = [r["alpha"] for r in sweep]
        ax.plot(a, [r["identical_top1"] for r in sweep], "o-", label="identical top-1 (%)")
        ax.plot(a, [r["accuracy"] for r in sweep], "s--", label="twin accuracy (%)")
        ax.axhline(99.5, color="gray", lw=0.8, ls=":", label="goal 99.5%")
        ax.set_xlabel("ReLU alpha (sign error 2^-alpha)")
        ax.set_ylabel("%")
        ax.set_title(f"Twin fidelity against alpha ({sweep[0]['images']} images)")
        ax.legend()
        paths.append(_save(fig, folder / "fidelity_alpha.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path

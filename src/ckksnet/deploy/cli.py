"""The ``ckksnet`` command line. Each sub-command lives in one small function below; shared
flags are declared once (:mod:`ckksnet.deploy.flags`), and torch, OpenFHE and numpy are imported
only inside the commands that use them, so ``ckksnet --help`` starts in well under a second."""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from ckksnet.core import threads
from ckksnet.core.memory import SKIP_ENV
from ckksnet.core.preset import get_preset
from ckksnet.core.text import count
from ckksnet.deploy import flags
from ckksnet.deploy.service_cli import add_query, add_serve
from ckksnet.errors import CkksnetError, InputError


#: commands that compute (OpenFHE or torch): each takes --threads (flags.FLAGS["threads"])
COMPUTING = ("demo", "infer", "plan", "compile", "keygen", "encrypt", "run", "decrypt", "predict", "fidelity",
             "bootstrap", "train", "snapshot", "eval", "serve")
#: the commands among them that run torch (its intra-op threads are set too)
TORCH = ("demo", "infer", "plan", "compile", "predict", "fidelity", "train", "snapshot", "eval")
#: --threads help where the shared text is not the whole story
_THREADS_HELP = {
    "serve": {"help": "OpenMP threads of each worker process (default: the free cores shared among --workers; "
                      "$CKKSNET_THREADS, $OMP_NUM_THREADS as elsewhere; Ray workers: one core each)"},
    "run": {"help": "threads to compute with for one ciphertext file or a folder run in this process (default: "
                    "$CKKSNET_THREADS, else $OMP_NUM_THREADS, else the free cores); a folder's Ray workers take "
                    "--worker-cpus"},
}
#: commands whose one-line text reports times: it says on how many threads
TIMED = ("compile", "keygen", "run", "fidelity", "bootstrap", "eval")  # infer, demo: in their text's first clause


def _with_threads(report: dict) -> dict:
    """``report`` with the threads it ran on (threads, cores, load, where the count came from,
    and the OpenMP runtime's own figure where one is loaded)."""
    return {**report, **threads.report_fields()}


def _emit(args: argparse.Namespace, report: dict, text: str) -> int:
    """Print ``report`` as JSON with --json, else the one-line ``text``; both say the threads
    the command computed with (commands that compute)."""
    if args.command in COMPUTING:
        report = _with_threads(report)
        if args.command in TIMED:
            text += f" (on {threads.current().text()})"
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


def _apply_threads(args: argparse.Namespace) -> None:
    """Before any command computes: choose its threads (--threads, $CKKSNET_THREADS, ...), set
    them before OpenFHE or torch loads, and warn once (stderr) when they overload the machine."""
    workers = getattr(args, "workers", 1) if args.command == "serve" and not getattr(args, "ray", None) else 1
    choice = threads.apply(threads.choose_threads(args.threads, "--threads", processes=workers or 1))
    args.threads = choice.threads
    if args.command in TORCH:
        import torch

        torch.set_num_threads(choice.threads)


def _command_line() -> str:
    return "ckksnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _cmd_train(args: argparse.Namespace) -> int:
    from ckksnet.data import load_cifar10
    from ckksnet.training import TrainConfig, train
    from ckksnet.training.export import export_checkpoint

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, seed=args.seed, limit=args.limit,
                      blocks=args.blocks, widths=tuple(args.widths), threads=args.threads,
                      device=args.device, cutout=args.cutout, label_smoothing=args.label_smoothing,
                      amp=args.amp, teacher=args.teacher, kd_weight=args.kd_weight,
                      kd_temperature=args.kd_temperature, graph=args.graph, activation=args.activation,
                      init_from=args.init_from, init_margin=args.init_margin, init_fit=args.init_fit,
                      ramp_epochs=args.ramp_epochs, train_clamp_epochs=args.train_clamp_epochs,
                      boundary_weight=args.boundary_weight, clip_grad=args.clip_grad,
                      diverge_ratio=args.diverge_ratio, boundary_reduce=args.boundary_reduce,
                      freeze_bn=args.freeze_bn)
    train_split = load_cifar10("train", args.data)
    test_split = load_cifar10("test", args.data)
    if args.teacher_depth:  # a teacher first, same recipe, in RUN_DIR/teacher; then the distilled student
        teacher_cfg = replace(cfg, blocks=(args.teacher_depth - 2) // 6, epochs=args.teacher_epochs or cfg.epochs,
                              teacher=None, kd_weight=0.0)
        train(teacher_cfg, train_split, Path(args.run_dir) / "teacher", progress=args.progress)
        cfg = replace(cfg, teacher=str(Path(args.run_dir) / "teacher"), kd_weight=args.kd_weight or 0.7)
    model, run = train(cfg, train_split, args.run_dir, test_split if args.eval_each_epoch else None,
                       progress=args.progress)
    folder, result = export_checkpoint(model, cfg, run["history"], train_split, test_split, args.out,
                                       _command_line(), args.calibration_images)
    print(json.dumps(_with_threads({"checkpoint": str(folder), "test_accuracy": result["accuracy"]})))
    return 0


def _cmd_snapshot(args: argparse.Namespace) -> int:
    """A checkpoint from a run's latest state (an unfinished run too), labelled as such."""
    from ckksnet.data import load_cifar10
    from ckksnet.training.export import export_checkpoint, load_run_state

    model, cfg, history = load_run_state(args.run_dir)
    note = None if len(history) >= cfg.epochs else (
        f"interim snapshot after epoch {len(history)} of {cfg.epochs}; training continues")
    folder, result = export_checkpoint(model, cfg, history, load_cifar10("train", args.data),
                                       load_cifar10("test", args.data), args.out,
                                       f"ckksnet train (run {args.run_dir}); snapshot by {_command_line()}",
                                       args.calibration_images, note)
    print(json.dumps(_with_threads({"checkpoint": str(folder), "epochs": len(history),
                                    "test_accuracy": result["accuracy"], "note": note})))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ckksnet.compiler.checkpoints import load_model, model_input_shape
    from ckksnet.data import load_cifar10
    from ckksnet.training import evaluate

    if args.limit is not None and args.limit < 1:
        raise CkksnetError(f"--limit must be at least 1 image, not {args.limit}")
    model, meta = load_model(args.checkpoint, args.model, args.weights, args.trust_pickle)
    c, h, w = model_input_shape(model, meta, args.input_shape, args.image_size)
    if c != 3 or h > 32 or w > 32:
        raise CkksnetError(f"eval reads CIFAR-10's 3x32x32 test images; the model takes {c}x{h}x{w} "
                           "(a model for 3 channels and at most 32x32 pixels is evaluated on the images' centres)")
    split = load_cifar10("test", args.data)
    if args.limit is not None:
        split = split.stratified(args.limit)  # the test split is class-sorted: every class, in turn
    if (h, w) != split.images.shape[1:3]:
        top, left = (split.images.shape[1] - h) // 2, (split.images.shape[2] - w) // 2
        split = replace(split, images=split.images[:, top:top + h, left:left + w].copy(),
                        source=f"{split.source}, each image's {h}x{w} centre")
    try:
        result = evaluate(model, split)
    except RuntimeError as exc:  # torch's shape errors: the model takes another input than said
        raise CkksnetError(f"the model does not run on {c}x{h}x{w} images ({exc}); give its input with "
                           "--input-shape C H W or --image-size N") from exc
    if args.limit is not None:
        result["subset"] = (f"stratified: {result['images']} images in all, taken from each class in turn "
                            f"({len(result['per_class'])} classes)")
    per_class = "".join(f"\n  {name:>10}: {acc:.2f}%" for name, acc in result["per_class"].items())
    subset = " (a stratified subset: each class in turn)" if args.limit else ""
    return _emit(args, result, f"accuracy {result['accuracy']:.2f}% on {result['images']} images of "
                 f"{result['source']}{subset}{per_class}")


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    """Encrypt a random vector, bootstrap it, decrypt it; print times and precision in bits."""
    import numpy as np

    from ckksnet.core.backend import get_backend

    preset = get_preset(args.preset)
    t0 = time.time()
    keys = get_backend(args.backend).make_keys(preset, (), bootstrap=True)
    keygen = time.time() - t0
    server = keys.evaluator()  # holds no secret key
    x = np.random.default_rng(args.seed).uniform(-1, 1, preset.slots)
    ct = keys.encrypt(x, levels_left=1)
    t1 = time.time()
    out = server.bootstrap(ct)
    boot = time.time() - t1
    err = float(np.max(np.abs(keys.decrypt(out) - x)))
    report = {"preset": preset.name, "backend": args.backend, "ring_dim": preset.ring_dim, "slots": preset.slots,
              "keygen_seconds": round(keygen, 2), "bootstrap_seconds": round(boot, 2),
              "levels_left_after_bootstrap": server.levels_left(out),
              "max_abs_error": err, "precision_bits": round(-float(np.log2(max(err, 2.0**-64))), 2)}
    return _emit(args, report, f"preset {report['preset']} (N={report['ring_dim']}, {report['slots']} slots): "
                 f"keys {keygen:.1f} s, bootstrap {boot:.1f} s, {report['levels_left_after_bootstrap']} "
                 f"levels left, precision {report['precision_bits']:.1f} bits (max error {err:.2e})")


def _cmd_approx(args: argparse.Namespace) -> int:
    from ckksnet.approx import ReluApprox, measured_sign_error

    relu = ReluApprox.from_table(args.alpha, 1.0, args.eps_bits)
    sign = relu.sign
    sign_err = measured_sign_error(sign, args.points)
    report = {
        "alpha": sign.alpha, "eps": sign.eps, "degrees": list(sign.degrees),
        "sign_depth": sign.depth, "relu_depth": relu.depth(prescaled=True),
        "relu_depth_unscaled_input": relu.depth(prescaled=False),
        "ct_ct_products": sign.products + 1,
        "relinearizations": sign.relinearizations + 1,
        "max_sign_error_on_eps_1": sign_err, "max_sign_error_bits": -math.log2(sign_err),
        "grid_points": args.points,
        "max_relu_error_on_-1_1": relu.max_error(args.points),
        "near_zero_gain_M": relu.near_zero_gain(),
        "basis": "each component is sum_k c[k] * T_(2k+1)(z), Chebyshev polynomials of the first kind on [-1, 1]",
        "composition": "sgn(x) ~ comp[K-1](...comp[0](x)); ReLU(x) ~ x * (1 + sgn(x)) / 2 for |x| <= 1",
        "how_to_check": "numpy.polynomial.chebyshev.chebval(z, full) with full[1::2] = c, applied in order",
        "components": [list(c) for c in sign.components],
    }
    return _emit(args, report, f"alpha {args.alpha}, eps 2^-{args.eps_bits}: degrees {report['degrees']}, "
                 f"sign depth {report['sign_depth']}, ReLU depth {report['relu_depth']} (+1 if not prescaled), "
                 f"{report['ct_ct_products']} ct x ct products ({report['relinearizations']} relinearizations); sign error 2^-{report['max_sign_error_bits']:.2f}, "
                 f"max ReLU error {report['max_relu_error_on_-1_1']:.3g} on [-1, 1]")


def _add_approx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("approx", help="inspect the shipped minimax composite approximations")
    p.add_argument("function", choices=["relu"], help="the approximated function (relu)")
    p.add_argument("--alpha", type=int, default=13, help="sign precision: error <= 2^-alpha on [eps, 1]")
    p.add_argument("--eps-bits", type=int, default=9, help="eps = 2^-EPS_BITS")
    p.add_argument("--points", type=int, default=200_000, help="grid points for the measured errors")
    flags.add(p, "json")
    p.set_defaults(func=_cmd_approx)


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from ckksnet.fidelity.report import fidelity_report

    res = fidelity_report(args.twin, args.encrypted, args.preset, args.data, args.checkpoint,
                          flags.sign_tables(args), args.state, not args.no_noise, args.plots,
                          [int(a) for a in args.alpha_sweep.split(",")] if args.alpha_sweep else None,
                          args.sweep_images, progress=not args.json, profile_from=args.profile_from)
    t, e = res["twin"], res["encrypted"]
    p = res["plain"]
    text = ((f"plaintext accuracy {p['accuracy']}% ({p['images']} images, {res['source']})\n" if p["images"]
             else "no images asked for (--twin 0 --encrypted 0)\n")
            + _summary_line(f"twin ({res['noise_model']})", t) + "\n" + _summary_line("encrypted", e) + "\n"
            f"ReLU inputs outside their bound: {res['relu_inputs_outside_bound']['total']}")
    if res.get("profile"):
        text += "\n" + _profile_line(res["profile"])
    return _emit(args, res, text)


def _summary_line(what: str, s: dict) -> str:
    """One line of a fidelity summary (twin or encrypted); 'not run' for 0 images."""
    if not s["images"]:
        return f"{what}: not run (0 images)"
    return (f"{what}: {s['identical_top1']}% identical top-1, accuracy {s['accuracy']}%, max logit error "
            f"{s['max_logit_error']:.3g} ({s['images']} images)")


def _profile_line(prof: dict) -> str:
    """One line of the fidelity profile: time by kind (s), peak RSS and rotation-key memory (GiB)."""
    which = f"image {prof['image']}" if "image" in prof else prof.get("from", "saved report")
    kinds = ", ".join(f"{k} {v:.0f} s" for k, v in prof["by_kind"].items())
    from ckksnet.runtime import rotation_key_text

    key_text = rotation_key_text(prof.get("key_memory_gb"))
    return (f"profile ({which}): {prof['seconds']:.0f} s, {count(prof['bootstraps'], 'bootstrap')}; {kinds}; "
            f"peak RSS {prof['peak_rss_gb']:.2f} GiB" + (f"; {key_text}" if key_text else ""))


def _add_fidelity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fidelity", help="plaintext vs twin vs encrypted on the CIFAR-10 test split")
    p.add_argument("--twin", type=int, default=10_000, help="images for the cleartext twin")
    p.add_argument("--encrypted", type=int, default=0, help="images run encrypted (the first K of a fixed permutation of the test split)")
    p.add_argument("--state", default="runs/fidelity/encrypted.jsonl",
                   help="resumable record of encrypted images (finished ones are never rerun)")
    flags.add(p, "preset", "checkpoint", "data", "alpha", "eps-bits")
    p.add_argument("--no-noise", action="store_true", help="exact twin (no CKKS noise model)")
    p.add_argument("--plots", help="folder for the PNG plots (e.g. benchmarks)")
    p.add_argument("--alpha-sweep", help="comma-separated alphas for the fidelity-vs-alpha plot")
    p.add_argument("--sweep-images", type=int, default=1000, help="twin images per alpha of --alpha-sweep")
    flags.add(p, "relu-sign")
    p.add_argument("--profile-from", help="a saved run report (JSON with a 'report') for the profile "
                   "when no image runs encrypted, e.g. benchmarks/resnet20_last.json")
    flags.add(p, "json")
    p.set_defaults(func=_cmd_fidelity)


def _add_bootstrap(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bootstrap", help="encrypt, bootstrap and decrypt a vector: time and precision")
    flags.add(p, "preset")
    p.add_argument("--seed", type=int, default=0, help="seed of the random test vector")
    flags.add(p, "backend")
    flags.add(p, "json")
    p.set_defaults(func=_cmd_bootstrap)


def _named(rec: dict, key: str, index: str) -> str:
    """'cat (3)' where the record names the class, else '3'."""
    name = rec.get(f"{key}_name")
    return f"{name} ({rec[index]})" if name is not None else str(rec[index])


def _print_image(rec: dict) -> None:
    mark = "same" if rec["plain_pred"] == rec["enc_pred"] else "DIFFERENT"
    print(f"image {rec['index']:5d}: label {_named(rec, 'label', 'label')}, plaintext "
          f"{_named(rec, 'plain', 'plain_pred')}, encrypted {_named(rec, 'enc', 'enc_pred')} ({mark}), "
          f"max |logit diff| {rec['max_abs_logit_diff']:.2e}, "
          f"{rec['seconds']:.1f} s, {count(rec['bootstraps'], 'bootstrap')}", flush=True)


def _cmd_infer(args: argparse.Namespace) -> int:
    import ckksnet.inference as inference

    result = inference.run(args.images, args.preset, args.data, args.checkpoint, flags.sign_tables(args),
                           progress=not args.json, on_image=None if args.json else _print_image)
    from ckksnet.runtime import rotation_key_text

    return _emit(args, result, f"{result['agreement'] * 100:.0f}% of encrypted predictions equal the "
                 f"plaintext ones (on {threads.current().text()}); keys {result['keygen_seconds']:.0f} s, "
                 f"{result['rotation_keys']} rotation keys made for the kernels, {rotation_key_text(result['key_memory_gb'])}; peak memory "
                 f"{result['report']['peak_rss_gb']:.1f} GiB")


def _add_infer(sub: argparse._SubParsersAction, name: str = "infer", images: int = 2) -> None:
    helptext = ("the main job: encrypted inference of real CIFAR-10 test images with the bundled "
                "ResNet-20" if name == "demo" else "encrypted inference of K real CIFAR-10 test images")
    p = sub.add_parser(name, help=helptext)
    p.add_argument("--images", type=int, default=images, help="number of test images K")
    flags.add(p, "preset", "checkpoint")
    p.add_argument("--data", help="CIFAR-10 location (default: foolbox's official images for K <= 20)")
    flags.add(p, "alpha", "eps-bits", "relu-sign", "skip-memory-check", "json")
    p.set_defaults(func=_cmd_infer)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    _add_infer(sub, "demo", images=1)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CIFAR ResNet (resumable) and write a checkpoint")
    flags.add(p, "data")
    p.add_argument("--run-dir", default="runs/resnet20", help="resumable state folder")
    p.add_argument("--out", default="runs/resnet20/checkpoint", help="final checkpoint folder")
    p.add_argument("--epochs", type=int, default=100, help="training epochs; the learning rate decays over them")
    p.add_argument("--batch-size", type=int, default=128, help="images per SGD step")
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")
    p.add_argument("--blocks", type=int, default=3, help="basic blocks per stage (3 = ResNet-20)")
    p.add_argument("--widths", type=int, nargs=3, default=[16, 32, 64], metavar="W",
                   help="channels of the three stages")
    p.add_argument("--limit", type=int, help="train on the first LIMIT images only")
    p.add_argument("--cutout", type=int, default=0, help="cutout square side in pixels (0 = off)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (0 = off)")
    p.add_argument("--device", default="cpu",
                   help="torch device, e.g. cuda: data, augmentation and sums stay on it (a resumed run may "
                        "switch devices)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="on a GPU: float32, no bf16 autocast")
    p.add_argument("--no-graph", dest="graph", action="store_false",
                   help="on a GPU: eager steps (default: each full batch replayed from a CUDA graph)")
    p.add_argument("--teacher", help="distil from this checkpoint or run folder, or 'bundled' (with --kd-weight)")
    p.add_argument("--teacher-depth", type=int, help="first train a ResNet of this depth (e.g. 56) as the "
                   "teacher, same recipe, in RUN_DIR/teacher; then distil from it")
    p.add_argument("--teacher-epochs", type=int, help="the teacher's epochs (default: --epochs)")
    p.add_argument("--kd-weight", type=float, default=0.0,
                   help="weight w of the distillation term, (1 - w) CE + w T^2 KL (default 0; 0.7 with "
                        "--teacher-depth)")
    p.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature T (default 4)")
    p.add_argument("--activation", default="relu", choices=("relu", "poly2", "poly3", "poly4"),
                   help="activation of every ReLU position: ReLU, or a trainable polynomial of degree 2-4 (PolyAct)")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start from this ReLU checkpoint (or 'bundled'), each "
                   "ReLU replaced by its least-squares polynomial on its calibrated range (with --activation polyD)")
    p.add_argument("--init-margin", type=float, default=1.0,
                   help="with --init-from: each polynomial's bound is this x the ReLU's calibrated max |input|")
    p.add_argument("--init-fit", choices=("range", "data"), default="range",
                   help="with --init-from: fit each polynomial to ReLU uniformly on its range (range) or on the "
                        "inputs it sees on training images (data: closer where most inputs fall)")
    p.add_argument("--ramp-epochs", type=float, default=0.0,
                   help="blend ReLU into each polynomial, its share falling from 1 to 0 over these first epochs "
                        "(replacing every ReLU at once leaves a trained network near chance; 0 = off)")
    p.add_argument("--train-clamp-epochs", type=float, default=0.0,
                   help="for these first epochs (the ramp and a little more), each polynomial reads its input "
                        "clipped to its bound in training: one outlier cannot blow a batch up while the weights "
                        "adapt; afterwards training sees the polynomials as inference does (0 = off)")
    p.add_argument("--boundary-weight", type=float, default=0.0,
                   help="weight of the boundary loss on polynomial inputs beyond their bound (0 = off)")
    p.add_argument("--boundary-reduce", choices=("mean", "max"), default="mean",
                   help="boundary loss over all inputs (mean) or over each image's largest excess (max: rare "
                        "outliers, which blow polynomial networks up, get a real gradient)")
    p.add_argument("--freeze-bn", action="store_true",
                   help="batch norms use (and keep) their running statistics in training too: a fine-tune then "
                        "computes what inference computes (a polynomial network's batch statistics swing with "
                        "its outliers)")
    p.add_argument("--clip-grad", type=float, default=0.0, help="clip the gradients' global norm (0 = off)")
    p.add_argument("--diverge-ratio", type=float, default=100.0,
                   help="stop, naming the layer, when a polynomial's input passes this x its bound (default 100; "
                        "a non-finite loss always stops; may change when resuming)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="epoch lines only, no bars")
    p.add_argument("--calibration-images", type=int, default=10000,
                   help="training images whose ReLU inputs set each bound")
    p.add_argument("--eval-each-epoch", action="store_true", help="report test accuracy per epoch")
    p.set_defaults(func=_cmd_train)


def _add_snapshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="write a checkpoint from a training run's latest state")
    p.add_argument("--run-dir", default="runs/resnet20", help="the run folder (its state.pt; default runs/resnet20)")
    p.add_argument("--out", default="runs/resnet20/checkpoint", help="checkpoint folder to write "
                   "(default runs/resnet20/checkpoint)")
    flags.add(p, "data")
    p.add_argument("--calibration-images", type=int, default=10000,
                   help="training images whose ReLU inputs set each bound (default 10000)")
    p.set_defaults(func=_cmd_snapshot)


def _cmd_plan(args: argparse.Namespace) -> int:
    """Compile and print the schedule: no key is made."""
    from ckksnet.compiler.checkpoints import compile_checkpoint
    from ckksnet.compiler.report import plan_report, plan_text

    net, _, _ = compile_checkpoint(preset=args.preset, signs=flags.sign_tables(args), backend=args.backend,
                                   **flags.model_source(args))
    rep = plan_report(net)
    return _emit(args, rep, plan_text(rep))


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="compile and print the schedule (levels, bootstraps, keys, estimated "
                       "time and memory) without making any key")
    flags.add(p, *flags.MODEL, "calibration", "preset", "backend", "alpha", "eps-bits", "relu-sign")
    flags.add(p, "json")
    p.set_defaults(func=_cmd_plan)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="plaintext test accuracy of the bundled (or a given) checkpoint, or of "
                       "your own model (--model)")
    flags.add(p, *flags.MODEL)
    p.add_argument("--data", help="CIFAR-10 location, or 'foolbox' for the 20 official images")
    p.add_argument("--limit", type=int, help="LIMIT test images, taken from each class in turn")
    flags.add(p, "json")
    p.set_defaults(func=_cmd_eval)


# ---------------------------------------------------------------- client / server in separate processes
def _cmd_compile(args: argparse.Namespace) -> int:
    """Compile a checkpoint and write the server and client artifacts (no key is made)."""
    from ckksnet.compiler.checkpoints import compile_checkpoint

    net, _, _ = compile_checkpoint(preset=args.preset, signs=flags.sign_tables(args), classes=flags.class_names(args),
                                   backend=args.backend, **flags.model_source(args))
    net.classes = flags.default_classes(args, len(net.classes))  # --model: indices unless --classes names them
    folder = net.save(args.out)
    if args.model and not args.weights:  # said after success: a refusal stays one line
        warnings.warn(f"--model {args.model} without --weights: the plan holds the factory's own weights "
                      "(random unless it loads trained ones)", stacklevel=1)
    spec = net.client_spec()
    report = {"out": str(folder), "server_plan": str(folder / "server_plan.ckksnet"),
              "client_plan": str(folder / "client_plan.ckksnet"), "preset": net.preset.name,
              "steps": len(net.steps), "bootstraps": net.schedule.bootstraps, "input_level": spec.input_level,
              "rotation_keys": len(spec.rotation_keys), "bootstrap_keys": spec.bootstrap,
              "classes": list(spec.classes), "input_shape": list(spec.input_shape)}
    return _emit(args, report, f"compiled {report['steps']} steps ({count(report['bootstraps'], 'bootstrap')}, preset "
                 f"{report['preset']}, input {'x'.join(map(str, spec.input_shape))}) into {folder}: give client_plan.ckksnet to the client, keep "
                 "server_plan.ckksnet on the server")


def _cmd_keygen(args: argparse.Namespace) -> int:
    """Make every key a client artifact asks for; write the key set (secret key owner-only)."""
    from ckksnet.core.backend import EVAL_DIR, SECRET_KEY_FILE
    from ckksnet.runtime import Client, load_client_spec

    out = Path(args.out)
    if (out / SECRET_KEY_FILE).exists() and not args.force:
        raise CkksnetError(f"{out} already holds a secret key; ciphertexts made with it could no longer "
                           "be decrypted if it were replaced (--force replaces it)")
    spec = load_client_spec(args.client)
    t0 = time.time()
    client = Client(spec)
    keygen = time.time() - t0
    client.save_keys(out)
    size = sum(f.stat().st_size for f in (out / EVAL_DIR).iterdir())
    report = {"keys": str(out), "eval_keys": str(out / EVAL_DIR), "secret_key": str(out / SECRET_KEY_FILE),
              "preset": spec.preset.name, "backend": spec.backend, "context_id": client.context_id,
              "rotation_keys": len(spec.rotation_keys), "bootstrap_keys": spec.bootstrap,
              "keygen_seconds": round(keygen, 2), "save_seconds": round(time.time() - t0 - keygen, 2),
              "eval_keys_bytes": size}
    return _emit(args, report, f"keys for preset {spec.preset.name} in {out} ({keygen:.1f} s); the secret key "
                 f"stays in {report['secret_key']} (owner-only); ship {report['eval_keys']} "
                 f"({size / 2**20:.0f} MiB) to the server")


def _client_from_files(client_artifact: str, keys: str):
    """A runtime Client from a client artifact and a key folder written by keygen."""
    from ckksnet.runtime import Client, load_client_spec

    return Client.load(load_client_spec(client_artifact), keys)


def _cmd_encrypt(args: argparse.Namespace) -> int:
    """Encrypt images (PNG / JPEG / .npy), one ciphertext file each."""
    from ckksnet.imagefile import read_image

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give the folder for the ciphertexts")
    client = _client_from_files(args.client, args.keys)
    lay = client.spec.input_layout
    _check_input_shape(args, client.spec.input_shape)
    names = [Path(p).stem + ".ckks" for p in args.images]
    if len(set(names)) != len(names):
        raise InputError("two images share a file name; each gives CT_DIR/<name>.ckks")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for image, name in zip(args.images, names):
        pixels, note = read_image(image, lay.channels, lay.height, lay.width, args.resize)
        if note:
            print(note, file=sys.stderr)
        client.save_ciphertext(client.encrypt(pixels), out / name)
        done.append({"image": image, "ciphertext": str(out / name), "resized": note is not None})
    return _emit(args, {"ciphertexts": done}, "\n".join(f"{d['image']} -> {d['ciphertext']}" for d in done))


def _check_input_shape(args: argparse.Namespace, shape: tuple) -> None:
    """--input-shape / --image-size, where given, must be the client plan's input (it records it)."""
    c, h, w = shape
    if args.input_shape is not None and tuple(args.input_shape) != (c, h, w):
        raise CkksnetError(f"--input-shape {' '.join(map(str, args.input_shape))} disagrees with the client plan, "
                           f"compiled for {c}x{h}x{w} inputs (the plan records its input: drop the flag)")
    if args.image_size is not None and (args.image_size, args.image_size) != (h, w):
        raise CkksnetError(f"--image-size {args.image_size} disagrees with the client plan, compiled for "
                           f"{h}x{w} images (the plan records its input: drop the flag)")


def _cmd_run(args: argparse.Namespace) -> int:
    """The server side, offline: a ciphertext file through the plan with the evaluation keys;
    a folder of them (or ``--workers``) goes to :func:`_cmd_run_batch`."""
    if Path(args.input).is_dir() or args.workers is not None or args.ray is not None or args.use_ray is not None:
        return _cmd_run_batch(args)
    from ckksnet.runtime import Server, load_plan

    _check_writable(args.output)  # before any work: a secure image takes 13-15 minutes of inference
    server = Server.load(load_plan(args.plan), args.eval_keys)
    out = server.run(server.load_ciphertext(args.input), progress=True)
    server.save_ciphertext(out, args.output)
    rep = server.report.to_dict()
    return _emit(args, {"in": args.input, "out": args.output, "report": rep},
                 f"{len(rep['steps'])} steps, {count(rep['bootstraps'], 'bootstrap')} in {rep['seconds']:.1f} s "
                 f"(peak memory {rep['peak_rss_gb']:.2f} GiB); wrote {args.output}")


def _check_writable(path: str) -> None:
    """Raise :class:`CkksnetError` now if ``path`` could not be written later: its folder is
    missing or not writable, or it is a folder."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise CkksnetError(f"--out {path} is a folder; give a file name (e.g. {p / 'out.ckks'})")
    if not folder.is_dir():
        raise CkksnetError(f"--out {path}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        raise CkksnetError(f"--out {path}: the folder {folder} is not writable")


_RUNNERS = {True: "over Ray workers", False: "in this process (no Ray)"}


def _cmd_run_batch(args: argparse.Namespace) -> int:
    """Every ciphertext of a folder, over N Ray workers or in this process when Ray would not
    pay (ckksnet.deploy.distributed); resumable."""
    from ckksnet.deploy.distributed import run_batch

    def say_runner(kind: str, **fields) -> None:
        if kind == "runner":  # before the work: a user waiting knows what runs and why
            print(f"ckksnet run: {_RUNNERS[fields['ray']]}: {fields['reason']}", file=sys.stderr)

    try:
        report = run_batch(args.plan, args.eval_keys, args.input, args.output,
                           workers=1 if args.workers is None else args.workers, address=args.ray,
                           worker_memory_gb=args.worker_memory, worker_cpus=args.worker_cpus,
                           retries=args.retries, progress=True,  # the bar is on stderr, --json on stdout
                           on_event=say_runner, use_ray=args.use_ray or "auto")
    except KeyboardInterrupt:
        print(f"ckksnet run: interrupted; finished images are in {args.output} (results.jsonl): run the same "
              "command again to resume", file=sys.stderr)
        return 130
    rep = report.to_dict()
    workers = ", ".join(f"{w['worker']} {w.get('images', 0)} image(s), keys loaded {w.get('key_loads', 0)}x in "
                        f"{w.get('load_seconds', 0):.1f} s{' (died)' if w.get('died') else ''}" for w in rep["workers"])
    failed = "".join(f"\n  failed: {r['input']}: {r['error']}" for r in rep["results"] if r["status"] == "failed")
    rate = f", {rep['images_per_minute']:.2f} images/min" if rep["images_per_minute"] else ""
    text = (f"{rep['done']} of {rep['images']} images done ({rep['resumed']} from an earlier run), {rep['failed']} "
            f"failed, in {rep['seconds']:.1f} s{rate}; {rep['worker_deaths']} worker(s) died; outputs in "
            f"{args.output}\n  ran {_RUNNERS[rep['runner'] == 'ray']}: {rep['runner_reason']}"
            + (f"\n  workers: {workers}" if workers else "") + failed)
    _emit(args, rep, text)
    return 0 if report.ok else 1


def _softmax(logits):
    import numpy as np

    e = np.exp(logits - np.max(logits))  # shifted: no overflow
    return e / e.sum()


def _prediction(logits, classes) -> dict:
    probs = _softmax(logits)
    best = int(logits.argmax())
    names = list(classes) if len(classes) == len(logits) else [str(i) for i in range(len(logits))]
    return {"predicted": names[best], "predicted_index": best, "logits": [float(v) for v in logits],
            "probabilities": {n: float(p) for n, p in zip(names, probs)}}


def _prediction_text(what: str, pred: dict) -> str:
    p = pred["probabilities"][pred["predicted"]]
    logits = ", ".join(f"{v:.4g}" for v in pred["logits"])
    return f"{what}: {pred['predicted']} (class {pred['predicted_index']}, p = {p:.3f}); logits [{logits}]"


def _cmd_decrypt(args: argparse.Namespace) -> int:
    """The client decrypts the server's output: logits, class name, softmax probabilities. With
    several files (or a folder of .ckks files) one line each, JSON ``{"predictions": [...]}``."""
    client = _client_from_files(args.client, args.keys)
    files = []
    for name in args.ciphertext:
        path = Path(name)
        found = sorted(str(p) for p in path.glob("*.ckks")) if path.is_dir() else [name]
        if not found:
            raise CkksnetError(f"{path} holds no .ckks ciphertext file")
        files += found
    preds = []
    for name in files:
        logits = client.decrypt(client.load_ciphertext(name, expect="output"))
        preds.append({"ciphertext": name, **_prediction(logits, client.spec.classes)})
    if len(args.ciphertext) == 1 and len(files) == 1 and not Path(args.ciphertext[0]).is_dir():
        return _emit(args, preds[0], _prediction_text("encrypted prediction", preds[0]))
    return _emit(args, {"predictions": preds},
                 "\n".join(_prediction_text(f"encrypted prediction of {p['ciphertext']}", p) for p in preds))


def _cmd_predict(args: argparse.Namespace) -> int:
    """Plaintext prediction of the model itself (torch), for comparison with the encrypted one."""
    import numpy as np
    import torch

    from ckksnet.compiler.checkpoints import load_model, model_input_shape
    from ckksnet.imagefile import read_image
    from ckksnet.inputs import as_images

    model, meta = load_model(args.checkpoint, args.model, args.weights, args.trust_pickle)
    channels, height, width = model_input_shape(model, meta, args.input_shape, args.image_size)
    out = []
    for image in args.images:
        pixels, note = read_image(image, channels, height, width, args.resize)
        if note:
            print(note, file=sys.stderr)
        x, _ = as_images(pixels, channels, height, width)
        try:
            with torch.no_grad():
                logits = model(torch.from_numpy(x).float()).double().numpy()[0]
        except RuntimeError as exc:  # torch's shape errors: the model takes another input than said
            raise CkksnetError(f"the model does not run on {channels}x{height}x{width} images ({exc}); give its "
                               "input with --input-shape C H W or --image-size N") from exc
        out.append({"image": image, **_prediction(np.asarray(logits), flags.default_classes(args, len(logits)))})
    return _emit(args, {"predictions": out},
                 "\n".join(_prediction_text(f"plaintext prediction of {p['image']}", p) for p in out))


def _add_client_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a checkpoint, or your own model (--model), into server and "
                       "client artifacts")
    flags.add(p, *flags.MODEL, "calibration", "preset", "backend", "classes")
    p.add_argument("--out", required=True, help="folder for server_plan.ckksnet and client_plan.ckksnet")
    flags.add(p, "alpha", "eps-bits", "relu-sign", "json")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("keygen", help="make the keys a client artifact needs (secret key stays here)")
    p.add_argument("--client", required=True, help="client artifact (client_plan.ckksnet)")
    p.add_argument("--out", required=True, help="key folder; OUT/eval is what a server gets")
    p.add_argument("--force", action="store_true", help="replace a secret key already in OUT")
    flags.add(p, "skip-memory-check", "json")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("encrypt", help="encrypt images (PNG, JPEG, .npy): one ciphertext file each")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, .npy)")
    p.add_argument("--keys", required=True, help="key folder written by keygen")
    p.add_argument("--client", required=True, help="client artifact (client_plan.ckksnet)")
    p.add_argument("--out", required=True, help="folder for the ciphertexts (<image name>.ckks)")
    flags.add(p, "resize", "json")
    flags.add(p, "input-shape", "image-size",
              input_shape={"help": "not needed: the client plan records its input; if given, it must agree"},
              image_size={"help": "not needed: the client plan records its input; if given, it must agree"})
    p.set_defaults(func=_cmd_encrypt)

    p = sub.add_parser("run", help="server side, offline: run the plan on a ciphertext file, or on a folder "
                       "of them over N Ray workers")
    p.add_argument("--plan", required=True, help="server artifact (server_plan.ckksnet)")
    p.add_argument("--eval-keys", required=True, help="evaluation-key folder (KEYDIR/eval)")
    p.add_argument("--in", dest="input", required=True, help="input ciphertext file, or a folder of .ckks files")
    p.add_argument("--out", dest="output", required=True,
                   help="output ciphertext file, or (folder input) the output folder: one .ckks per input, "
                        "results.jsonl; rerun the same command to resume")
    p.add_argument("--workers", type=int, help="Ray workers for a folder (default 1); each loads the keys once")
    p.add_argument("--use-ray", choices=["auto", "always", "never"],
                   help="a folder over Ray workers: auto (default) starts a local Ray instance only when its "
                        "workers beat this process despite Ray's start-up (~7 s), by the plan's estimate; "
                        "always / never force it")
    p.add_argument("--ray", metavar="ADDRESS", help="join this Ray cluster ('auto', HOST:PORT) instead of "
                   "starting a local Ray instance")
    p.add_argument("--worker-memory", type=float, metavar="GIB",
                   help="memory each worker declares to Ray (default 1.7 x the key folder + 0.5 GiB)")
    p.add_argument("--worker-cpus", type=int, default=1, help="cores per worker (its OpenMP threads; default 1)")
    p.add_argument("--retries", type=int, default=2, help="times an image is sent again after its worker died")
    flags.add(p, "skip-memory-check")
    flags.add(p, "json", json={"help": "the per-step report (one file) or the batch report as JSON"})
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("decrypt", help="decrypt output ciphertexts: logits, class, probabilities")
    p.add_argument("ciphertext", nargs="+", help="output ciphertext file(s), or a folder of .ckks files")
    p.add_argument("--keys", required=True, help="key folder written by keygen")
    p.add_argument("--client", required=True, help="client artifact (client_plan.ckksnet)")
    flags.add(p, "json")
    p.set_defaults(func=_cmd_decrypt)

    p = sub.add_parser("predict", help="plaintext prediction of a checkpoint, or your own model (--model), on "
                       "image files (torch)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, .npy)")
    flags.add(p, *flags.MODEL, "classes", "resize", "json")
    p.set_defaults(func=_cmd_predict)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that states every option's default: appended as '(default X)' where the text does not
    already say it; empty defaults (None, off switches, empty lists) are left unsaid."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # identity, not ==: a default of 0 is worth saying, an off switch is not
        unsaid = any(action.default is v for v in (None, False, True, argparse.SUPPRESS)) or action.default == []
        unsaid = unsaid or not action.option_strings
        if unsaid or "default" in text:
            return text
        return f"{text} (default %(default)s)"


def _every_parser(parser: argparse.ArgumentParser):
    """``parser`` and all its subcommand parsers, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _every_parser(child)


def _describe(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's one-line help, as listed under ``ckksnet --help``, also heads its own
    ``--help`` (argparse shows a subcommand's description there, not its help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if child.description is None and helps.get(name):
                    child.description = helps[name][0].upper() + helps[name][1:] + "."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckksnet", description="Encrypted inference of trained CNNs with RNS-CKKS (OpenFHE).")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_infer, _add_plan, _add_client_server, _add_fidelity, _add_bootstrap, _add_train,
                _add_snapshot, _add_eval, _add_approx, add_serve, add_query):
        add(sub)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in COMPUTING:
                flags.add(action.choices[name], "threads", threads=_THREADS_HELP.get(name, {}))
    for each in _every_parser(parser):  # add_parser does not pass the formatter down
        each.formatter_class = _DefaultsFormatter
        _describe(each)
    return parser


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line a user can act on, without the Python source line that raised them."""
    return f"ckksnet: warning: {message}\n"


def _once(fmt):
    """``fmt`` that gives each line once: a warning raised from two places (the insecure preset:
    by the compiler and by the key set) is printed once per command."""
    said: set[str] = set()

    def line(message, category, filename, lineno, line=None) -> str:
        text = fmt(message, category, filename, lineno, line)
        if text in said:
            return ""
        said.add(text)
        return text
    return line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "skip_memory_check", False):
        os.environ[SKIP_ENV] = "1"  # this process and the workers it starts
    shown, warnings.formatwarning = warnings.formatwarning, _once(_warning_line)
    try:
        if args.command in COMPUTING:
            _apply_threads(args)
        return args.func(args)
    except CkksnetError as exc:
        print(f"ckksnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ckksnet ... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())

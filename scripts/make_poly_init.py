"""A polynomial ResNet-20 to start a fine-tune from, or to plan with (issue 37):

    python scripts/make_poly_init.py --degree 2 --out runs/poly2-init [--checkpoint bundled]

Takes a ReLU checkpoint (default: the bundled ResNet-20), replaces each ReLU by its least-squares
polynomial on [-B, B] (B = the ReLU's calibrated max |input| x --margin), re-estimates the batch
norms' running statistics on training images (the statistics after a replaced activation change),
calibrates the polynomials' inputs on training images and writes a checkpoint (config.activation
"polyD"), printing its plaintext accuracy on a test subset. Not fine-tuned: expect chance-level
accuracy for degree 2 (measured 2026-12-07: 10.0% on 2,000 JPEG-copy test images; degree 4:
14.9%); `ckksnet train --activation polyD --init-from CHECKPOINT` is the fine-tune. Its schedule
does not depend on the accuracy: `ckksnet plan --checkpoint OUT --preset secure` (compile only)
gives the bootstraps of a degree-D ResNet-20 (degree 2: 6).
"""
from __future__ import annotations

import argparse
import json

import torch

from ckksnet.compiler.calibrate import calibrate
from ckksnet.data import load_cifar10
from ckksnet.models import save_checkpoint
from ckksnet.training import evaluate
from ckksnet.training.poly import init_from_relu, reestimate_batchnorm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--degree", type=int, default=2, choices=(2, 3, 4))
    p.add_argument("--checkpoint", default="bundled", help="ReLU checkpoint folder (default: the bundled ResNet-20)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--margin", type=float, default=1.0, help="polynomial bound = margin x calibrated max |input|")
    p.add_argument("--bn-images", type=int, default=5000, help="training images to re-estimate batch norms on")
    p.add_argument("--calibration-images", type=int, default=2000, help="training images to calibrate on")
    p.add_argument("--test-images", type=int, default=2000, help="test images to report accuracy on")
    p.add_argument("--data", help="CIFAR-10 data path (default: the loaders' search)")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = init_from_relu(args.checkpoint, args.degree, args.margin).eval()
    train, test = load_cifar10("train", args.data), load_cifar10("test", args.data)
    if args.bn_images:
        reestimate_batchnorm(model, train.stratified(args.bn_images).images)
    cal = calibrate(model, train.stratified(args.calibration_images).images)
    result = evaluate(model, test.stratified(args.test_images))
    save_checkpoint(model, {"calibration": {"images": args.calibration_images, "split": "train (each class in turn)",
                                            "relus": cal},
                            "note": f"{args.checkpoint} with each ReLU replaced by its least-squares degree-"
                                    f"{args.degree} polynomial, batch norms re-estimated; not fine-tuned"}, args.out)
    print(json.dumps({"checkpoint": args.out, "degree": args.degree, "test_images": result["images"],
                      "accuracy": result["accuracy"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

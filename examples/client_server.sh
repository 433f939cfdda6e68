#!/usr/bin/env bash
# Encrypted inference with the client and the server as separate processes that share only files:
#
#   model owner: ckksnet compile   -> server_plan.ckksnet (weights) + client_plan.ckksnet (none)
#   client:      ckksnet keygen    -> KEYDIR (secret key, owner-only) + KEYDIR/eval (to ship)
#   client:      ckksnet encrypt   -> one ciphertext file per image
#   server:      ckksnet run       -> output ciphertext (server plan + evaluation keys only)
#   client:      ckksnet decrypt   -> logits, class, probabilities
#
# and compares with the plaintext prediction of the same checkpoint (ckksnet predict). The last
# line states both predictions; the exit status is 0 only if they match. The server step runs
# offline (ckksnet run); over HTTP it is ckksnet serve / query where those are installed.
#
# usage: examples/client_server.sh PRESET CHECKPOINT IMAGE [WORKDIR]
#   PRESET      secure (128-bit; ~11 GiB of evaluation keys, 15-25 min) or test (insecure, small)
#   CHECKPOINT  a checkpoint folder, or "bundled" for the shipped ResNet-20
#   IMAGE       PNG, JPEG or .npy; PNG/JPEG of another size are resized (and it says so)
#   WORKDIR     where the artifacts, keys and ciphertexts go (default: a temporary folder, removed)
# environment: IMAGE_SIZE (model input N x N, default 32), ALPHA (default 13), EPS_BITS (default 9),
#   CKKSNET (the command; default: ckksnet on PATH, else .venv/bin/ckksnet), PYTHON (default python3)
set -euo pipefail

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    sed -n '/^# usage/,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
PRESET=$1 CHECKPOINT=$2 IMAGE=$3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CKKSNET=${CKKSNET:-$(command -v ckksnet || echo "$ROOT/.venv/bin/ckksnet")}
PYTHON=${PYTHON:-python3}
if [ $# -eq 4 ]; then
    WORK=$4
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi
CK=()
[ "$CHECKPOINT" != bundled ] && CK=(--checkpoint "$CHECKPOINT")
SIZE=${IMAGE_SIZE:-32}
NAME=$(basename "${IMAGE%.*}")

# model owner
"$CKKSNET" compile "${CK[@]}" --preset "$PRESET" --out "$WORK/plan" --image-size "$SIZE" \
    --alpha "${ALPHA:-13}" --eps-bits "${EPS_BITS:-9}" --json > "$WORK/compile.json"
# client: keys, then the encrypted image
"$CKKSNET" keygen --client "$WORK/plan/client_plan.ckksnet" --out "$WORK/keys" --json > "$WORK/keygen.json"
"$CKKSNET" encrypt "$IMAGE" --keys "$WORK/keys" --client "$WORK/plan/client_plan.ckksnet" \
    --out "$WORK/ct" --resize --json > "$WORK/encrypt.json"
# server: sees the server plan, the evaluation keys and ciphertexts, never the secret key
"$CKKSNET" run --plan "$WORK/plan/server_plan.ckksnet" --eval-keys "$WORK/keys/eval" \
    --in "$WORK/ct/$NAME.ckks" --out "$WORK/out.ckks" --json > "$WORK/run.json"
# client
"$CKKSNET" decrypt "$WORK/out.ckks" --keys "$WORK/keys" --client "$WORK/plan/client_plan.ckksnet" \
    --json > "$WORK/decrypt.json"
# the plaintext model, for comparison
"$CKKSNET" predict "$IMAGE" "${CK[@]}" --image-size "$SIZE" --resize --json > "$WORK/predict.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
enc = json.load(open(f"{work}/decrypt.json"))
plain = json.load(open(f"{work}/predict.json"))["predictions"][0]
diff = max(abs(a - b) for a, b in zip(enc["logits"], plain["logits"]))
same = enc["predicted_index"] == plain["predicted_index"]
print(f"encrypted prediction: {enc['predicted']} (class {enc['predicted_index']}); plaintext prediction: "
      f"{plain['predicted']} (class {plain['predicted_index']}); {'MATCH' if same else 'MISMATCH'} "
      f"(max logit difference {diff:.2e})")
sys.exit(0 if same else 1)
PY

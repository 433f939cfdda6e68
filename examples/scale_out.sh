#!/usr/bin/env bash
# Many encrypted images over several Ray workers, each a process that loads the evaluation keys once:
#
#   model owner: ckksnet compile  -> server_plan.ckksnet (weights) + client_plan.ckksnet (none)
#   client:      ckksnet keygen   -> KEYDIR (secret key, owner-only) + KEYDIR/eval (to ship)
#   client:      ckksnet encrypt  -> one ciphertext per image of IMAGE_DIR
#   server:      ckksnet run --in CT_DIR --out OUT_DIR --workers N   (a local Ray instance, or the
#                cluster at $RAY_ADDRESS; server plan + evaluation keys only, never the secret key)
#   client:      ckksnet decrypt OUT_DIR   -> logits, class, probabilities per image
#
# and compares each with the plaintext prediction of the same checkpoint (ckksnet predict). The
# last line says "K of K encrypted predictions equal plaintext"; the exit status is 0 only if all
# match. Rerunning with the same WORKDIR resumes an interrupted batch (finished images are kept);
# a WORKDIR belongs to one PRESET, CHECKPOINT, IMAGE_DIR content and ALPHA/EPS_BITS/IMAGE_SIZE (a
# rerun with others is refused: use a new WORKDIR).
#
# usage: examples/scale_out.sh PRESET CHECKPOINT IMAGE_DIR WORKERS [WORKDIR]
#   PRESET      secure (128-bit; each worker needs ~13 GiB, so one per 16 GiB machine) or test
#   CHECKPOINT  a checkpoint folder, or "bundled" for the shipped ResNet-20
#   IMAGE_DIR   a folder of PNG, JPEG or .npy images (PNG/JPEG of another size are resized)
#   WORKERS     Ray workers (processes), each with its own copy of the evaluation keys in memory
#   WORKDIR     artifacts, keys, ciphertexts and outputs (default: a temporary folder, removed)
# environment: IMAGE_SIZE (model input N x N, default 32), ALPHA (default 13), EPS_BITS (default 9),
#   RAY_ADDRESS (join this Ray cluster; every node must read WORKDIR at the same path),
#   WORKER_CPUS (cores, hence OpenMP threads, per worker; default 1),
#   USE_RAY (auto: Ray only when its workers beat one process despite its start-up, the default;
#   always; never),
#   CKKSNET (the command; default: ckksnet on PATH, else .venv/bin/ckksnet), PYTHON (default python3)
set -euo pipefail

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
    sed -n '/^# usage/,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
PRESET=$1 CHECKPOINT=$2 IMAGE_DIR=$3 WORKERS=$4
if ! [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]]; then
    echo "WORKERS must be a positive whole number, got '$WORKERS'" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CKKSNET=${CKKSNET:-$(command -v ckksnet || echo "$ROOT/.venv/bin/ckksnet")}
PYTHON=${PYTHON:-python3}
if [ $# -eq 5 ]; then
    WORK=$5 REMOVE_WORK=
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d) REMOVE_WORK=1
fi
WORK=$(cd "$WORK" && pwd)
cleanup() {
    local status=$?
    [ -n "$REMOVE_WORK" ] && rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
T0=$SECONDS
say() { echo "[$((SECONDS - T0)) s] $*" >&2; }

shopt -s nullglob nocaseglob
IMAGES=("$IMAGE_DIR"/*.png "$IMAGE_DIR"/*.jpg "$IMAGE_DIR"/*.jpeg "$IMAGE_DIR"/*.npy)
shopt -u nullglob nocaseglob
if [ ${#IMAGES[@]} -eq 0 ]; then
    echo "no PNG, JPEG or .npy image in $IMAGE_DIR" >&2
    exit 2
fi
CK=()
[ "$CHECKPOINT" != bundled ] && CK=(--checkpoint "$CHECKPOINT")
RAY=()
[ -n "${RAY_ADDRESS:-}" ] && RAY=(--ray "$RAY_ADDRESS")
SIZE=${IMAGE_SIZE:-32}
PLAN=$WORK/plan KEYS=$WORK/keys

# what this WORKDIR was made for: a rerun with other inputs would mix their results
FINGERPRINT=$( { echo "$PRESET $CHECKPOINT ${ALPHA:-13} ${EPS_BITS:-9} $SIZE"
                 for image in "${IMAGES[@]}"; do
                     printf '%s ' "$(basename "$image")"; sha256sum < "$image"
                 done
                 if [ -d "$CHECKPOINT" ]; then find "$CHECKPOINT" -type f -exec sha256sum {} + | sort; fi
               } | sha256sum | cut -d' ' -f1)
if [ -f "$WORK/inputs.sha256" ] && [ "$(cat "$WORK/inputs.sha256")" != "$FINGERPRINT" ]; then
    echo "$WORK was made for other inputs (preset, checkpoint, images or ALPHA/EPS_BITS/IMAGE_SIZE);" \
         "use a new WORKDIR" >&2
    exit 2
fi
echo "$FINGERPRINT" > "$WORK/inputs.sha256"

# model owner (kept on a rerun: the keys and the batch's results belong to this plan)
if [ ! -f "$PLAN/server_plan.ckksnet" ]; then
    "$CKKSNET" compile "${CK[@]}" --preset "$PRESET" --out "$PLAN" --image-size "$SIZE" \
        --alpha "${ALPHA:-13}" --eps-bits "${EPS_BITS:-9}" --json > "$WORK/compile.json"
    say "compiled $PLAN"
fi
# client: keys once, then one ciphertext per image
if [ ! -f "$KEYS/secret_key.ckks" ]; then
    "$CKKSNET" keygen --client "$PLAN/client_plan.ckksnet" --out "$KEYS" --json > "$WORK/keygen.json"
    say "keys in $KEYS (evaluation keys: $KEYS/eval)"
    rm -rf "$WORK/ct" "$WORK/out"  # ciphertexts of other keys, if any, are of no use
fi
if [ ! -d "$WORK/ct" ]; then
    "$CKKSNET" encrypt "${IMAGES[@]}" --keys "$KEYS" --client "$PLAN/client_plan.ckksnet" \
        --out "$WORK/ct" --resize --json > "$WORK/encrypt.json"
    say "encrypted ${#IMAGES[@]} images -> $WORK/ct"
fi

# server: the whole folder over WORKERS Ray workers, or in one process when Ray would not pay (it
# says which and why; progress bar on stderr); exit status 1 when
# some images failed (their reasons are in run.json and below): the others are still compared
RUN_STATUS=0
"$CKKSNET" run --plan "$PLAN/server_plan.ckksnet" --eval-keys "$KEYS/eval" --in "$WORK/ct" \
    --out "$WORK/out" --workers "$WORKERS" --worker-cpus "${WORKER_CPUS:-1}" --use-ray "${USE_RAY:-auto}" \
    "${RAY[@]}" --json \
    > "$WORK/run.json" || RUN_STATUS=$?
[ "$RUN_STATUS" -le 1 ] || exit "$RUN_STATUS"
say "encrypted inference of ${#IMAGES[@]} images over $WORKERS worker(s) -> $WORK/out"

# client, and the plaintext model for comparison
if compgen -G "$WORK/out/*.ckks" > /dev/null; then
    "$CKKSNET" decrypt "$WORK/out" --keys "$KEYS" --client "$PLAN/client_plan.ckksnet" --json > "$WORK/decrypt.json"
else
    echo '{"predictions": []}' > "$WORK/decrypt.json"
fi
"$CKKSNET" predict "${IMAGES[@]}" "${CK[@]}" --image-size "$SIZE" --resize --json > "$WORK/predict.json"

"$PYTHON" - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
stem = lambda path: os.path.splitext(os.path.basename(path))[0]
enc = {stem(p["ciphertext"]): p for p in json.load(open(f"{work}/decrypt.json"))["predictions"]}
plain = {stem(p["image"]): p for p in json.load(open(f"{work}/predict.json"))["predictions"]}
run = json.load(open(f"{work}/run.json"))
for r in run["results"]:
    if r["status"] == "failed":
        print(f"{stem(r['input'])}: FAILED on the server: {r['error']}")
same = 0
for name, p in sorted(plain.items()):
    e = enc.get(name)
    ok = e is not None and e["predicted_index"] == p["predicted_index"]
    same += ok
    got = "missing" if e is None else f"{e['predicted']} (max logit difference " \
        f"{max(abs(a - b) for a, b in zip(e['logits'], p['logits'])):.2e})"
    print(f"{name}: encrypted {got}, plaintext {p['predicted']}{'' if ok else '  MISMATCH'}")
rate = run.get("images_per_minute")
print(f"workers: {len(run['workers'])}, worker deaths: {run['worker_deaths']}, "
      f"{rate if rate is not None else 'n/a'} images/min in this run")
print(f"{same} of {len(plain)} encrypted predictions equal plaintext")
sys.exit(0 if same == len(plain) else 1)
PY

#!/usr/bin/env bash
# Encrypted inference with the model owner, the client and the server as separate processes:
#
#   model owner: ckksnet compile   -> server_plan.ckksnet (weights) + client_plan.ckksnet (none)
#   client:      ckksnet keygen    -> KEYDIR (secret key, owner-only) + KEYDIR/eval (to ship)
#   server:      ckksnet serve     -> HTTP service on a free loopback port, in the background
#   client:      ckksnet query upload  -> the evaluation keys go to the server; a key set id and
#                                         an access token come back
#   client:      ckksnet encrypt   -> one ciphertext file per image
#   client:      ckksnet query run -> the server runs the plan on the ciphertext (server plan +
#                                     evaluation keys only); the output ciphertext comes back
#   client:      ckksnet decrypt   -> logits, class, probabilities
#
# and compares with the plaintext prediction of the same checkpoint (ckksnet predict). The last
# line states both predictions; the exit status is 0 only if they match. The server is stopped
# when the script exits, however it exits (SIGTERM to the server, then SIGKILL to its process
# group, workers included). With OFFLINE=1 the server step is `ckksnet run` on the files instead
# (no HTTP, no serve).
#
# usage: examples/client_server.sh PRESET CHECKPOINT IMAGE [WORKDIR]
#   PRESET      secure (128-bit; ~7.8 GiB of evaluation keys on disk, ~11 GiB loaded, twice on disk once uploaded; 13-15 min
#               of inference per image on 2 cores) or test (insecure, small)
#   CHECKPOINT  a checkpoint folder, or "bundled" for the shipped ResNet-20
#   IMAGE       PNG, JPEG or .npy; PNG/JPEG of another size are resized (and it says so)
#   WORKDIR     where the artifacts, keys, ciphertexts and the server's state and log go
#               (default: a temporary folder, removed at the end)
# environment: IMAGE_SIZE (model input N x N, default 32), ALPHA (default 13), EPS_BITS (default 9),
#   OFFLINE=1 (ckksnet run instead of ckksnet serve), PORT (default: a free port),
#   SERVE_TIMEOUT (seconds to wait for the server's /health, default 120),
#   CKKSNET (the command; default: ckksnet on PATH, else .venv/bin/ckksnet), PYTHON (default python3)
set -euo pipefail

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    sed -n '/^# usage/,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
PRESET=$1 CHECKPOINT=$2 IMAGE=$3
if [ ! -f "$IMAGE" ]; then  # before any key is made or uploaded
    echo "client_server.sh: $IMAGE: no such image file (examples/photo.png is one: an official CIFAR-10 test image)" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CKKSNET=${CKKSNET:-$(command -v ckksnet || echo "$ROOT/.venv/bin/ckksnet")}
PYTHON=${PYTHON:-python3}
SERVER_PID=
if [ $# -eq 4 ]; then
    WORK=$4 REMOVE_WORK=
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d) REMOVE_WORK=1
fi
WORK=$(cd "$WORK" && pwd)

stop_server() {
    # the server first (it stops its workers and marks a running job failed), then, if it is still
    # there after 30 s, its whole process group; workers also die with the server (PR_SET_PDEATHSIG)
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 300); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
    fi
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
cleanup() {
    local status=$?
    stop_server
    [ -n "$REMOVE_WORK" ] && rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
T0=$SECONDS
say() { echo "[$((SECONDS - T0)) s] $*" >&2; }

CK=()
[ "$CHECKPOINT" != bundled ] && CK=(--checkpoint "$CHECKPOINT")
SIZE=${IMAGE_SIZE:-32}
NAME=$(basename "${IMAGE%.*}")
PLAN=$WORK/plan KEYS=$WORK/keys

# model owner
"$CKKSNET" compile "${CK[@]}" --preset "$PRESET" --out "$PLAN" --image-size "$SIZE" \
    --alpha "${ALPHA:-13}" --eps-bits "${EPS_BITS:-9}" --json > "$WORK/compile.json"
say "compiled $PLAN"
# client: the keys (this process exits before the server loads them: ~11 GiB each in memory at secure)
"$CKKSNET" keygen --client "$PLAN/client_plan.ckksnet" --out "$KEYS" --json > "$WORK/keygen.json"
say "keys in $KEYS (evaluation keys: $KEYS/eval)"

if [ -z "${OFFLINE:-}" ]; then
    # server: the service, in its own session and process group, on a free loopback port
    PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    URL=http://127.0.0.1:$PORT
    QUERY=("$CKKSNET" query --url "$URL")  # progress bars on stderr
    if command -v setsid > /dev/null; then
        setsid "$CKKSNET" serve --plan "$PLAN/server_plan.ckksnet" --state "$WORK/serve" --port "$PORT" \
            > "$WORK/serve.log" 2>&1 < /dev/null &
    else  # job control: a background job gets a process group of its own
        set -m
        "$CKKSNET" serve --plan "$PLAN/server_plan.ckksnet" --state "$WORK/serve" --port "$PORT" \
            > "$WORK/serve.log" 2>&1 < /dev/null &
        set +m
    fi
    SERVER_PID=$!
    echo "$SERVER_PID" > "$WORK/serve.pid"
    deadline=$((SECONDS + ${SERVE_TIMEOUT:-120}))
    until "${QUERY[@]}" --quiet health > "$WORK/health.json" 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "ckksnet serve exited; its log ($WORK/serve.log) ends:" >&2
            tail -n 20 "$WORK/serve.log" >&2
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "ckksnet serve did not answer on $URL/health within ${SERVE_TIMEOUT:-120} s" >&2
            tail -n 20 "$WORK/serve.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    say "ckksnet serve (pid $SERVER_PID) answers on $URL; log: $WORK/serve.log"
    # client: upload the evaluation keys; the token stays in this process's environment (not on
    # a command line, not in a file)
    UPLOAD=$("${QUERY[@]}" upload --keys "$KEYS/eval")
    export CKKSNET_TOKEN
    CKKSNET_TOKEN=$(printf '%s' "$UPLOAD" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    KEYSET=$(printf '%s' "$UPLOAD" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["keyset_id"])')
    echo "{\"url\": \"$URL\", \"keyset_id\": \"$KEYSET\"}" > "$WORK/upload.json"
    say "uploaded $KEYS/eval: key set $KEYSET"
fi

# client: the encrypted image
"$CKKSNET" encrypt "$IMAGE" --keys "$KEYS" --client "$PLAN/client_plan.ckksnet" \
    --out "$WORK/ct" --resize --json > "$WORK/encrypt.json"
say "encrypted $IMAGE -> $WORK/ct/$NAME.ckks"

# server: sees the server plan, the evaluation keys and ciphertexts, never the secret key
if [ -z "${OFFLINE:-}" ]; then
    "${QUERY[@]}" run --in "$WORK/ct/$NAME.ckks" --out "$WORK/out.ckks" > /dev/null
    VIA="ckksnet serve at $URL"
    # the client deletes its key set and jobs from the server, then the server is stopped
    "${QUERY[@]}" --quiet --keyset-id "$KEYSET" delete > /dev/null
    stop_server
else
    "$CKKSNET" run --plan "$PLAN/server_plan.ckksnet" --eval-keys "$KEYS/eval" \
        --in "$WORK/ct/$NAME.ckks" --out "$WORK/out.ckks" --json > "$WORK/run.json"
    VIA="offline ckksnet run"
fi
say "encrypted inference done ($VIA) -> $WORK/out.ckks"

# client
"$CKKSNET" decrypt "$WORK/out.ckks" --keys "$KEYS" --client "$PLAN/client_plan.ckksnet" \
    --json > "$WORK/decrypt.json"
# the plaintext model, for comparison
"$CKKSNET" predict "$IMAGE" "${CK[@]}" --image-size "$SIZE" --resize --json > "$WORK/predict.json"

"$PYTHON" - "$WORK" "$VIA" <<'PY'
import json, sys
work, via = sys.argv[1:3]
enc = json.load(open(f"{work}/decrypt.json"))
plain = json.load(open(f"{work}/predict.json"))["predictions"][0]
diff = max(abs(a - b) for a, b in zip(enc["logits"], plain["logits"]))
same = enc["predicted_index"] == plain["predicted_index"]
print(f"encrypted prediction ({via}): {enc['predicted']} (class {enc['predicted_index']}); plaintext "
      f"prediction: {plain['predicted']} (class {plain['predicted_index']}); {'MATCH' if same else 'MISMATCH'} "
      f"(max logit difference {diff:.2e})")
sys.exit(0 if same else 1)
PY

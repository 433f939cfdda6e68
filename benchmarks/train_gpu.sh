#!/usr/bin/env bash
# One prepared command for a short accelerator lease (issue #31): a ResNet-56 teacher, then a
# ResNet-20 distilled from it, both on the GPU-resident training path (CUDA-graph steps after a
# graph-vs-eager check), inside BUDGET_S seconds.
#
#   OUT=DIR [DATA=PATH] [BUDGET_S=480] [DEVICE=cuda] [PYTHON=python3] bash benchmarks/train_gpu.sh [lease options]
#
# With `--teacher CHECKPOINT` (e.g. src/ckksnet/models/bundled/resnet20) no teacher is trained and the
# student takes the whole budget: the run that made the bundled checkpoint (RESULTS.md, issue #31).
#
# Writes DIR/teacher/state.pt, DIR/student/state.pt (after every epoch: a cut-short lease still
# leaves usable states), DIR/summary.json (rewritten at each phase) and DIR/log.txt; nothing else,
# so all of it comes back from the lease. DATA defaults to .devdata/cifar10-jpeg.tar.gz (the JPEG
# copy carried along), else ../shared/data. Needs torch only (no OpenFHE). The training is
# interrupted (SIGINT, then SIGKILL 15 s later) at BUDGET_S + 40 s whatever happens, so the command
# ends inside a lease's 600-s limit with the default budget. Back on a CPU machine:
#   ckksnet snapshot --run-dir DIR/student --out CHECKPOINT; ckksnet eval --checkpoint CHECKPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
DATA=${DATA:-.devdata/cifar10-jpeg.tar.gz}
[ -e "$DATA" ] || DATA=../shared/data
BUDGET_S=${BUDGET_S:-480}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CKKSNET_CACHE=${CKKSNET_CACHE:-$(mktemp -d)}  # decoded arrays stay out of OUT
{
  echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores; $PYTHON -m ckksnet.training.lease; budget ${BUDGET_S} s; data $DATA"
  if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/log.txt"
HARD_S=$(( ${BUDGET_S%.*} + 40 ))
status=0
timeout --signal=INT --kill-after=15 "$HARD_S" \
  "$PYTHON" -m ckksnet.training.lease --out "$OUT" --data "$DATA" --budget-s "$BUDGET_S" --device "$DEVICE" "$@" \
  2>&1 | tee -a "$OUT/log.txt" || status=$?
echo "# exit status $status; $(date -u +%FT%TZ); files: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')" | tee -a "$OUT/log.txt"
exit "$status"

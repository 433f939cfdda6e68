#!/usr/bin/env bash
# ckksnet set-up and entry points. On a fresh machine:
#   ./run.sh demo    # the main job (encrypted work at the secure, 128-bit preset)
#   ./run.sh test    # the test suite (small, explicitly insecure test preset)
# Each creates .venv with CPython 3.10 (the only Python the openfhe wheel supports), installs
# ckksnet editable with its dependencies when pyproject.toml changed, then runs.
set -euo pipefail
cd "$(dirname "$0")"

find_python310() {
  local cand
  if cand=$(command -v python3.10) && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
    echo "$cand"; return 0
  fi
  local root
  root=$( (command -v pyenv >/dev/null && pyenv root) || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for cand in "$root"/versions/3.10.*/bin/python3.10; do
    if [ -x "$cand" ]; then echo "$cand"; return 0; fi
  done
  return 1
}

setup() {
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
    local py
    if ! py=$(find_python310); then
      echo "ckksnet needs CPython 3.10 (the openfhe wheel is built for 3.10 only)." >&2
      echo "Install it (e.g. 'pyenv install 3.10.13') or put python3.10 on PATH, then retry." >&2
      exit 1
    fi
    echo "creating .venv with $py" >&2
    rm -rf .venv
    "$py" -m venv .venv
  fi
  if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "installing ckksnet and its dependencies into .venv (torch is large; the pip cache helps)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,notebook]'
    # foolbox ships the 20 bit-exact official CIFAR-10 test images; only its data files are used.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps foolbox==3.3.4
    touch .venv/.installed
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo) setup; exec .venv/bin/ckksnet demo "$@" ;;
  test) setup; exec .venv/bin/python -m pytest "$@" ;;
  setup) setup ;;
  *) echo "usage: ./run.sh demo|test|setup [args...]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Creates .venv with Python 3.10 and installs requirements.lock into it; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
stamp=.venv/.installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && "$(cat $stamp)" == "$want" ]]; then exit 0; fi

find_python() {
  if command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys; assert sys.version_info[:2]==(3,10)' 2>/dev/null; then
    command -v python3.10; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    for p in "$(pyenv root)"/versions/3.10.*/bin/python3.10; do [[ -x $p ]] && { echo "$p"; return; }; done
  fi
  for p in "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [[ -x $p ]] && { echo "$p"; return; }
  done
}
py=$(find_python || true)
if [[ -z "$py" ]]; then
  echo "ctseg needs Python 3.10 (TFX 1.15 supports nothing newer): install it with 'pyenv install 3.10' or your package manager (python3.10, python3.10-venv), then run this again." >&2
  exit 1
fi
echo "Installing ctseg into .venv with $py (first time takes a few minutes)..."
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2]==(3,10)' 2>/dev/null; then
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
.venv/bin/uv pip sync -q --python .venv/bin/python requirements.lock
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
echo "$want" > $stamp
echo "Installed."

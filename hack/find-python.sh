#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter (pyenv's, honouring .python-version, first).
set -euo pipefail
cd "$(dirname "$0")/.."
candidates=()
if command -v pyenv >/dev/null 2>&1; then
  want="$(cat .python-version 2>/dev/null || true)"
  [[ -n "$want" ]] && candidates+=("$(pyenv root)/versions/$want/bin/python3")
fi
for v in 3.14 3.13 3.12; do
  command -v "python$v" >/dev/null 2>&1 && candidates+=("$(command -v "python$v")")
  [[ -d "$HOME/.pyenv/versions" ]] && for d in "$HOME"/.pyenv/versions/"$v".*/bin/python3; do
    [[ -x "$d" ]] && candidates+=("$d")
  done
done
command -v python3 >/dev/null 2>&1 && candidates+=("$(command -v python3)")
for py in "${candidates[@]}"; do
  if [[ -x "$py" ]] && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    printf '%s\n' "$py"
    exit 0
  fi
done
echo "find-python: no Python >= 3.12 found (install one, e.g. with pyenv)" >&2
exit 1

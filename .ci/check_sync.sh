#!/bin/bash
# Fails when `nbdev-clean` or `nbdev-export` would change a file: notebooks are the source,
# committed notebooks must be clean and the exported package must match them.
set -euo pipefail
BIN=${1:-.venv/bin}
snap() { find nbs breakhis_clf -type f -not -path '*/__pycache__/*' -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha1sum; }
before=$(snap)
"$BIN/nbdev-clean"
"$BIN/nbdev-export"
after=$(snap)
if [ "$before" != "$after" ]; then
  echo "nbdev-clean/nbdev-export changed these files; run them and commit the result:" >&2
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print $3}' | sort -u >&2
  exit 1
fi
echo "notebooks clean, package in sync with notebooks"

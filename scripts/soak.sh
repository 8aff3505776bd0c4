#!/usr/bin/env bash
# make soak: one worker at half its measured capacity for SURGE_SOAK_SECS (default
# 600 s); asserts no error result and flat worker RSS, then writes the "Soak" section
# of BENCHMARKS.md (between <!-- soak:start --> and <!-- soak:end -->).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
$CARGO build -q --workspace --bins
$CARGO test -q -p surge-testkit --test soak -- --ignored --nocapture 2>&1 | grep -v '^\s*$' | tail -n 40
python3 - <<'PY'
import pathlib
section = pathlib.Path("out/soak/section.md").read_text()
path = pathlib.Path("BENCHMARKS.md")
doc = path.read_text() if path.exists() else "# Benchmarks\n"
start, end = "<!-- soak:start -->", "<!-- soak:end -->"
if start in doc and end in doc:
    doc = doc[: doc.index(start)] + section.rstrip("\n") + doc[doc.index(end) + len(end):]
else:
    doc = doc.rstrip("\n") + "\n\n" + section
path.write_text(doc)
print("wrote the Soak section of BENCHMARKS.md")
PY

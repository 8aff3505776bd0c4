#!/usr/bin/env python3
"""Fails when docs/ARCHITECTURE.md's `crate-graph` block differs from `cargo metadata`:
the picture of the crates must be the real one."""
import json, re, subprocess, sys

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
    check=True, capture_output=True, text=True).stdout)
names = {p["name"] for p in meta["packages"]}
real = {p["name"]: sorted(d["name"] for d in p["dependencies"]
                          if d["name"] in names and d["kind"] is None)
        for p in meta["packages"]}
doc = open("docs/ARCHITECTURE.md").read()
m = re.search(r"```crate-graph\n(.*?)```", doc, re.S)
if not m:
    sys.exit("check-crate-graph: docs/ARCHITECTURE.md has no ```crate-graph block")
drawn = {}
for line in m.group(1).strip().splitlines():
    name, _, deps = line.partition("->")
    drawn[name.strip()] = sorted(d.strip() for d in deps.split(",") if d.strip())
if drawn != real:
    for k in sorted(set(drawn) | set(real)):
        if drawn.get(k) != real.get(k):
            print(f"  {k}: docs say {drawn.get(k)}, cargo metadata says {real.get(k)}")
    sys.exit("check-crate-graph: docs/ARCHITECTURE.md's crate graph is out of date")
print(f"check-crate-graph: docs/ARCHITECTURE.md matches cargo metadata ({len(real)} crates)")

#!/usr/bin/env python3
"""Fails when README.md or docs/*.md name a `--flag` that no Surge binary's `--help`
knows (and that is not another tool's flag listed below): docs must not promise flags
that do not exist. Usage: check-doc-flags.py BIN_DIR"""
import glob, re, subprocess, sys

bin_dir = sys.argv[1] if len(sys.argv) > 1 else "target/debug"
helps = [
    ["surge", "--help"], ["surge", "worker", "--help"], ["surge", "autoscale", "--help"],
    ["surge", "models", "--help"], ["surge", "models", "list", "--help"],
    ["surge", "models", "check", "--help"], ["surge", "models", "new", "--help"],
    ["score-batch", "--help"], ["surge-bench", "--help"],
]
known = set()
for cmd in helps:
    out = subprocess.run([f"{bin_dir}/{cmd[0]}", *cmd[1:]], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"check-doc-flags: {' '.join(cmd)} failed: {out.stderr.strip()}")
    known |= set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))
# surge-bench's subcommands.
sub = subprocess.run([f"{bin_dir}/surge-bench", "--help"], capture_output=True, text=True).stdout
for name in re.findall(r"^  ([a-z][a-z-]+)\s", sub, re.M):
    out = subprocess.run([f"{bin_dir}/surge-bench", name, "--help"], capture_output=True, text=True)
    known |= set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))
# Flags of other tools that the docs show (cargo, pip, docker, rabbitmqctl, npm, ...).
other = {
    "--release", "--features", "--workspace", "--all-targets", "--bins", "--bin", "--test",
    "--profile", "--example", "--no-fail-fast", "--nocapture", "--check", "--all", "--locked",
    "--help", "--version", "--fix", "--allow-dirty", "--lib", "--package",
    "--index-url", "--extra-index-url", "--prefix", "--no-audit", "--no-fund", "--disable-pip-version-check",
    "--quiet", "--scale", "--profile", "--build", "--detach", "--file", "--env-file", "--rm",
    "--from-literal", "--from-file", "--namespace", "--dry-run", "--output", "--set",
    "--vhost", "--node", "--formatter", "--no-deps", "--format-version", "--offline",
    "--upgrade", "--user", "--target", "--depth", "--nocapture", "--include-ignored",
    "--cacert", "--cert", "--key", "--data", "--silent", "--fail", "--porcelain",
}
bad = []
for path in ["README.md", *sorted(glob.glob("docs/*.md"))]:
    for n, line in enumerate(open(path), 1):
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", line):
            if flag not in known and flag not in other:
                bad.append(f"{path}:{n}: {flag}")
if bad:
    print("\n".join(bad))
    sys.exit(f"check-doc-flags: {len(bad)} flags in the docs exist in no --help")
print(f"check-doc-flags: every --flag in README.md and docs/ exists ({len(known)} known)")

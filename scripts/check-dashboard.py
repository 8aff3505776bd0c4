#!/usr/bin/env python3
"""Every metric the Grafana dashboard queries must exist: in crates/surge-ops/src/names.rs
and in the /metrics text of a live worker or autoscaler.

    python3 scripts/check-dashboard.py [--dashboard deploy/grafana/surge.json] SOURCE...

Each SOURCE is a /metrics URL (http://127.0.0.1:9187/metrics) or a file holding such a
text. Metric names are read from every PromQL expression of the dashboard (panel targets
and templating queries); the `_bucket`, `_sum` and `_count` of a histogram count as the
histogram, and a `_bucket` must belong to a histogram (not a summary). Names Prometheus
makes itself (`up`, `scrape_*`) are not looked up. A metric shows in /metrics only once it
has been recorded: take the texts after some work (tests/observe.rs does).

Exits non-zero with one line per problem; prints the names checked.
"""
import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_bucket", "_sum", "_count")
# Series Prometheus adds to every target; they are not in any /metrics text.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2"}


def expressions(dash):
    """Every PromQL expression in the dashboard: panel targets (rows included) and
    templating queries (label_values(metric, label) and friends)."""
    out = []

    def walk_panels(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk_panels(p.get("panels", []))

    walk_panels(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.match(r"\s*(?:label_values|query_result|metrics)\s*\((.*)\)\s*$", q, re.S)
        if m:
            q = m.group(1).split(",")[0] if q.lstrip().startswith("label_values") else m.group(1)
        if q.strip():
            out.append((f"variable ${v.get('name')}", q))
    return out


def metric_names(expr):
    """Metric names in one PromQL expression (a small lexer: enough for dashboards)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables outside matchers
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def base(name):
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def parse_metrics(text):
    """(sample names, {name: type}) of a Prometheus text exposition."""
    samples, types = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return samples, types


def read_source(src):
    if re.match(r"https?://", src):
        with urllib.request.urlopen(src, timeout=5) as r:
            return r.read().decode()
    return Path(src).read_text()


def declared_names():
    text = (ROOT / "crates" / "surge-ops" / "src" / "names.rs").read_text()
    return set(re.findall(r'pub const \w+: &str = "([^"]+)";', text))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dashboard", default=str(ROOT / "deploy" / "grafana" / "surge.json"))
    ap.add_argument("sources", nargs="+", help="/metrics URLs or files")
    args = ap.parse_args()

    dash = json.loads(Path(args.dashboard).read_text())
    problems = []
    if dash.get("schemaVersion", 0) < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')} is older than Grafana 9")
    ds_ok = any(v.get("name") == "DS_PROMETHEUS" and v.get("type") == "datasource"
                for v in dash.get("templating", {}).get("list", []))
    if not ds_ok:
        problems.append("no datasource template variable DS_PROMETHEUS")

    def check_ds(p):
        ds = p.get("datasource")
        if p.get("type") != "row" and (not isinstance(ds, dict) or ds.get("uid") != "${DS_PROMETHEUS}"):
            problems.append(f"panel {p.get('title')!r}: datasource is not ${{DS_PROMETHEUS}}")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                problems.append(f"panel {p.get('title')!r} target {t.get('refId')}: datasource is not ${{DS_PROMETHEUS}}")
        for sub in p.get("panels", []):
            check_ds(sub)

    for p in dash.get("panels", []):
        check_ds(p)

    samples, types = set(), {}
    for src in args.sources:
        try:
            s, t = parse_metrics(read_source(src))
        except Exception as e:  # noqa: BLE001 - report every source that fails
            problems.append(f"{src}: {e}")
            continue
        samples |= s
        types.update(t)
    present = samples | {base(n) for n in samples} | set(types)
    declared = declared_names()

    used = {}
    exprs = expressions(dash)
    if not exprs:
        problems.append("the dashboard has no PromQL expressions")
    for where, expr in exprs:
        for n in metric_names(expr):
            used.setdefault(n, set()).add(where)
    for n in sorted(used):
        if n in SYNTHETIC:
            continue
        b = base(n) if base(n) in types or base(n) in declared else n
        where = ", ".join(sorted(used[n]))
        if b not in declared:
            problems.append(f"{n} (in {where}) is not a name in crates/surge-ops/src/names.rs")
        if b not in present and n not in present:
            problems.append(f"{n} (in {where}) is in no /metrics text given ({len(args.sources)} sources)")
        elif n.endswith("_bucket") and types.get(b) not in (None, "histogram"):
            problems.append(f"{n} (in {where}): {b} is a {types.get(b)}, not a histogram (no buckets)")

    if problems:
        print("check-dashboard: FAILED", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    checked = sorted({base(n) if base(n) in declared else n for n in used})
    print(f"check-dashboard: ok ({len(exprs)} expressions, {len(checked)} metrics: {' '.join(checked)})")


if __name__ == "__main__":
    main()

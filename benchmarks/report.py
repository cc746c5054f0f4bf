"""Merging repeated runs, the printed table and the JSON result file."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path


def _med(vals):
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(vals) if vals else None


def merge_rows(runs: list) -> list:
    """Rows of several repetitions of one scenario -> one row per id, medians."""
    order, by_id = [], {}
    for rows in runs:
        for r in rows:
            if r["id"] not in by_id:
                order.append(r["id"])
                by_id[r["id"]] = []
            by_id[r["id"]].append(r)
    merged = []
    for rid in order:
        group = by_id[rid]
        m = dict(group[-1])
        for k in ("direct", "gateway", "direct_of", "gateway_of"):
            if k in m:
                m[k] = _med([g.get(k) for g in group])
        if len(group) > 1:
            m["runs"] = {"direct": [g.get("direct") for g in group],
                         "gateway": [g.get("gateway") for g in group]}
        merged.append(m)
    return merged


def evaluate(r: dict) -> dict:
    """Add the comparison value and whether the target is met."""
    d, g = r.get("direct"), r.get("gateway")
    cmp_val = None
    if d is not None and g is not None:
        if r.get("compare") == "ratio" and d:
            cmp_val = g / d
        elif r.get("compare") == "added":
            cmp_val = g - d
    r["compared"] = cmp_val
    t = r.get("target")
    met = None
    if t is not None:
        if t["op"] == "all":
            of = r.get("gateway_of")
            if g is not None and of:
                met = g == of
        else:
            v = cmp_val if t["on"] == "added" else g
            if v is not None:
                met = v <= t["value"] if t["op"] == "<=" else v == t["value"]
    r["met"] = met
    return r


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and (abs(v) >= 100 or v == 0)):
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _cell(r, side):
    v = r.get(side)
    if r.get("kind") == "fraction":
        of = r.get(f"{side}_of")
        return "-" if v is None else f"{_num(v)}/{_num(of)}"
    return _num(v)


def _target_txt(r):
    t = r.get("target")
    if not t:
        return ""
    if t["op"] == "all":
        return "all"
    on = " added" if t["on"] == "added" else ""
    return f"{t['op']} {_num(t['value'])}{on}"


def _compared_txt(r) -> str:
    """The ratio (1.23x) or the difference (+4.5) of gateway to direct, or '' when there is none."""
    c = r.get("compared")
    if c is None:
        return ""
    if r.get("compare") == "ratio":
        return f"{c:.2f}x"
    return ("+" if c >= 0 else "") + _num(c)


def format_table(rows: list) -> str:
    head = ("metric", "unit", "direct", "gateway", "ratio/added", "target", "met")
    lines = []
    for r in rows:
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        lines.append((r["metric"], r["unit"], _cell(r, "direct"), _cell(r, "gateway"),
                      _compared_txt(r) or "-", _target_txt(r), met))
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    out = []
    for i, line in enumerate([head] + lines):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [line[k].rjust(widths[k]) for k in (2, 3, 4)]
        cells += [line[5].ljust(widths[5]), line[6]]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("-" * len(out[0]))
    notes = [f"  note: {r['metric']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + notes)


def format_markdown(rows: list) -> str:
    """The same table as format_table, as Markdown for the README."""
    out = ["| metric | unit | direct | gateway | ratio/added | target | met |",
           "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        target = _target_txt(r).replace("<=", "≤")
        out.append(f"| {r['metric']} | {r['unit']} | {_cell(r, 'direct')} | {_cell(r, 'gateway')} | "
                   f"{_compared_txt(r)} | {target} | {met} |")
    return "\n".join(out)


def write_json(path: Path, doc: dict):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=_default)
        f.write("\n")
    os.replace(tmp, path)


def _default(o):
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return repr(o)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

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
        for k in ("direct", "floor", "gateway", "direct_of", "floor_of", "gateway_of"):
            if k in m:
                m[k] = _med([g.get(k) for g in group])
        if len(group) > 1:
            m["runs"] = {side: [g.get(side) for g in group]
                         for side in ("direct", "floor", "gateway")}
        merged.append(m)
    return merged


def _versus(r, side):
    """The ratio or difference of ``side`` (gateway or floor) to direct, per the row's compare."""
    d, v = r.get("direct"), r.get(side)
    if d is None or v is None:
        return None
    if r.get("compare") == "ratio":
        return v / d if d else None
    if r.get("compare") == "added":
        return v - d
    return None


def _check(op, v, limit):
    if v is None:
        return None
    if op == "<=":
        return v <= limit
    if op == "abs<=":
        return abs(v) <= limit
    return v == limit


def evaluate(r: dict) -> dict:
    """Add the comparisons (to direct, and gateway ÷ floor) and whether the target is met.

    A target is on the gateway's figure ("gateway"), on gateway minus direct ("added"), on
    gateway ÷ floor ("floor_ratio") or on gateway minus floor ("floor_added"); "max" adds a cap
    on the gateway's own figure.  Without the floor's figure a floor target is not decided.
    """
    g, f = r.get("gateway"), r.get("floor")
    r["compared"] = _versus(r, "gateway")
    r["compared_floor"] = _versus(r, "floor")
    r["vs_floor"] = (g / f if r.get("floor_ratio") and g is not None and f else None)
    t = r.get("target")
    met = None
    if t is not None:
        if t["op"] == "all":
            of = r.get("gateway_of")
            if g is not None and of:
                met = g == of
        else:
            on = t["on"]
            if on == "added":
                v = r["compared"]
            elif on == "floor_ratio":
                v = r["vs_floor"] if r.get("floor_ratio") else (g / f if g is not None and f else None)
            elif on == "floor_added":
                v = g - f if g is not None and f is not None else None
            else:
                v = g
            checks = [_check(t["op"], v, t["value"])]
            if t.get("max") is not None:
                checks.append(_check("<=", g, t["max"]))
            met = False if False in checks else (None if None in checks else True)
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
        whole = [int(x) if isinstance(x, float) and x.is_integer() else x for x in (v, of)]
        return "-" if v is None else f"{_num(whole[0])}/{_num(whole[1])}"
    return _num(v)


def _target_txt(r):
    t = r.get("target")
    if not t:
        return ""
    if t["op"] == "all":
        return "all"
    on, val = t["on"], _num(t["value"])
    if on == "floor_ratio":
        txt = f"{t['op']} {val}x floor"
    elif on == "floor_added":
        txt = f"{t['op']} floor +{val}"
    elif t["op"] == "abs<=":
        txt = f"within ±{val}"
    else:
        txt = f"{t['op']} {val}" + (" added" if on == "added" else "")
    if t.get("max") is not None:
        txt += f", <= {_num(t['max'])}"
    return txt


def _compared_txt(r, key="compared") -> str:
    """The ratio (1.23x) or the difference (+4.5) to direct, or '' when there is none."""
    c = r.get(key)
    if c is None:
        return ""
    if r.get("compare") == "ratio":
        return f"{c:.2f}x"
    return ("+" if c >= 0 else "") + _num(c)


def _vs_floor_txt(r) -> str:
    v = r.get("vs_floor")
    return "" if v is None else f"{v:.2f}x"


HEAD = ("metric", "unit", "direct", "floor", "gateway", "floor vs direct",
        "gateway vs direct", "gateway ÷ floor", "target", "met")


def _line(r, met_txt) -> tuple:
    if "compared" not in r:  # an old results file, or a row not evaluated yet
        r = evaluate(dict(r))
    return (r["metric"], r["unit"], _cell(r, "direct"), _cell(r, "floor"), _cell(r, "gateway"),
            _compared_txt(r, "compared_floor"), _compared_txt(r), _vs_floor_txt(r),
            _target_txt(r), met_txt[r.get("met")])


def format_table(rows: list) -> str:
    lines = [_line(r, {True: "yes", False: "NO", None: ""}) for r in rows]
    lines = [tuple(c if c or k in (0, 1, 8, 9) else "-" for k, c in enumerate(x)) for x in lines]
    widths = [max(len(x[i]) for x in [HEAD] + lines) for i in range(len(HEAD))]
    out = []
    for i, line in enumerate([HEAD] + lines):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [line[k].rjust(widths[k]) for k in range(2, 8)]
        cells += [line[8].ljust(widths[8]), line[9]]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("-" * len(out[0]))
    notes = [f"  note: {r['metric']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + notes)


def format_markdown(rows: list) -> str:
    """The same table as format_table, as Markdown for the README."""
    out = ["| " + " | ".join(HEAD) + " |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        line = list(_line(r, {True: "yes", False: "**no**", None: ""}))
        line[8] = line[8].replace("<=", "≤")
        out.append("| " + " | ".join(line) + " |")
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

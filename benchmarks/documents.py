"""Time text extraction from PDFs (services/extract.py): a 100-page text PDF against a 1-page one.

Both are built here with fpdf2 (about 40 lines of text a page, Helvetica), then each is extracted
--reps times in the same process, alternating, after one warm-up run each. Printed as JSON: the
median and min seconds per document, per page, and the 100-page/1-page ratio of the medians (100
would mean extraction costs the same for every page, above 100 that later pages cost more).

Run (from a checkout): .venv/bin/python benchmarks/documents.py [--reps 5] [--pages 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpdf import FPDF

from mlops_backend.services.extract import Limits, extract


def text_pdf(pages: int, lines: int = 40) -> bytes:
    """A PDF of `pages` pages, each `lines` lines of numbered words."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for page in range(pages):
        pdf.add_page()
        for line in range(lines):
            pdf.cell(0, 6, f"Page {page + 1} line {line + 1}: the quick brown fox jumps over the lazy dog {line}",
                     new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def timed(data: bytes) -> float:
    started = time.perf_counter()
    extract(data, "bench.pdf", "application/pdf", Limits(max_seconds=600))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pages", type=int, default=100)
    args = parser.parse_args()
    small, large = text_pdf(1), text_pdf(args.pages)
    timed(small), timed(large)  # warm-up: imports, font tables, caches
    times: dict[str, list[float]] = {"1": [], str(args.pages): []}
    for _ in range(args.reps):
        times["1"].append(timed(small))
        times[str(args.pages)].append(timed(large))
    one, many = statistics.median(times["1"]), statistics.median(times[str(args.pages)])
    print(json.dumps({
        "python": platform.python_version(), "reps": args.reps,
        "pdf_bytes": {"1": len(small), str(args.pages): len(large)},
        "median_s": {"1": round(one, 5), str(args.pages): round(many, 4)},
        "min_s": {key: round(min(values), 5) for key, values in times.items()},
        "median_ms_per_page": {"1": round(one * 1000, 2), str(args.pages): round(many * 1000 / args.pages, 2)},
        "ratio_to_1_page": round(many / one, 1),
    }, indent=2))


if __name__ == "__main__":
    main()

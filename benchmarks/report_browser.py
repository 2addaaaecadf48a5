"""Size and open time of the single-file report in headless Chromium, and the browser check of
tests/browser.py (filter, hover against kernels.parquet, CSV and summary.json downloads, no
console error) on it, for `make demo`'s report and for a report of every registered source.

    kernelatlas analyze efficientnet_lite0 mobilenet_v2 --out /tmp/ka-demo --method both
    kernelatlas analyze '*' --out /tmp/ka-all --method both
    .venv/bin/python benchmarks/report_browser.py /tmp/ka-demo /tmp/ka-all [--loads 5]

Each page is copied alone into another folder and loaded ``--loads`` times, each time in a
fresh Chromium (no cache): ``ready_ms`` is the browser's own time from navigation start to
the moment the page's scripts have drawn the explorer (performance mark ``ka-ready``).
Writes docs/benchmarks/report.json and, for the first report, the screenshots in
docs/figures/report/ that the README shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import chromium, exercise_report, missing, open_report, ready_ms  # noqa: E402


def measure(run_dir: Path, loads: int, shots: Path | None) -> dict:
    doc = json.loads((run_dir / "summary.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "mailed" / "report.html"
        page.parent.mkdir()
        shutil.copy(run_dir / "index.html", page)
        times, walls = [], []
        for i in range(loads):
            driver = chromium(Path(tmp) / f"load{i}")
            try:
                walls.append(open_report(driver, page))
                times.append(ready_ms(driver))
            finally:
                driver.quit()
        driver = chromium(Path(tmp) / "check")
        try:
            checked = exercise_report(driver, run_dir, page, shots=shots)
        finally:
            driver.quit()
    return {
        "run": str(run_dir),
        "command": doc["config"].get("command"),
        "sources": len(doc["config"]["sources"]),
        "page_mb": round(page_bytes(run_dir) / 2**20, 2),
        "kernels": checked["kernels"],
        "kernels_in_page": checked["kernels_in_page"],
        "sampled": checked["sampled"],
        "ready_ms_median": round(statistics.median(times)),
        "ready_ms": [round(t) for t in times],
        "open_s_median": round(statistics.median(walls), 3),
        "browser_check": "passed",
    }


def page_bytes(run_dir: Path) -> int:
    return (run_dir / "index.html").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "runs", nargs="+", type=Path, help="analysis folders (the first gives the screenshots)"
    )
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "report.json")
    ap.add_argument("--shots", type=Path, default=ROOT / "docs" / "figures" / "report")
    args = ap.parse_args()
    if missing():
        sys.exit(missing())
    import platform

    import kernelatlas

    results = []
    for i, run in enumerate(args.runs):
        res = measure(run, args.loads, args.shots if i == 0 else None)
        print(json.dumps(res), flush=True)
        results.append(res)
    import os

    doc = {
        "kernelatlas_version": kernelatlas.__version__,
        "chromium": "Debian chromium, headless (--headless=new), via selenium + chromedriver",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared, loaded)",
        "targets": {"demo_page_mb": 15, "ready_ms": 2000},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

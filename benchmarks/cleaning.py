"""What cleaning costs per trial: one measurement through the row builder and the GE gate.

Runs ``clean_measurement`` on a real measurement of each target (tests/data/measurements/good)
``--calls`` times after one warm-up call, and prints the one-time cost (Great Expectations'
import and the suite's set-up) and the per-trial cost. Goal: under 100 ms per trial.

    python benchmarks/cleaning.py --calls 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from targets.base import Measurement
from targets.registry import load_target
from tasks.clean import clean_measurement, measurement_row

GOOD = Path(__file__).resolve().parent.parent / "tests" / "data" / "measurements" / "good"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    table = Table(title=f"cleaning cost per trial ({args.calls} calls per measurement)")
    for col in ("measurement", "samples", "first call (GE import)", "row only, median",
                "row + gate, median", "p90"):
        table.add_column(col, justify="right")
    for path in sorted(GOOD.glob("*.json")):
        case = json.loads(path.read_text())
        cls = load_target(case["target"])
        m = Measurement.from_dict(case["measurement"])
        started = time.perf_counter()
        clean_measurement(m, cls, case["objective"], case["requested"])
        first = time.perf_counter() - started
        rows, full = [], []
        for _ in range(args.calls):
            t = time.perf_counter()
            measurement_row(m, cls, case["requested"])
            rows.append(time.perf_counter() - t)
            t = time.perf_counter()
            clean_measurement(m, cls, case["objective"], case["requested"])
            full.append(time.perf_counter() - t)
        full.sort()
        table.add_row(path.stem, str(len(m.samples)), f"{first * 1000:,.0f} ms",
                      f"{statistics.median(rows) * 1000:.2f} ms",
                      f"{statistics.median(full) * 1000:.1f} ms",
                      f"{full[int(0.9 * len(full))] * 1000:.1f} ms")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()

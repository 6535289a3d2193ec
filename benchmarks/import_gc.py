"""What Python's cyclic garbage collector costs while a cold command imports, side by side.

Each round starts two fresh interpreters, alternating which goes first: one imports what a
``knobflow tune`` command imports before its job (``flows.cli``, the flow, Great Expectations,
the training step's libraries, MLflow's stores, matplotlib: the order of ``flows.cli_tune``) with
the collector on, as before ``flows.entry`` turned it off, and one with it off, as the console
script now does. The same for what Prefect's temporary server imports
(``prefect.server.api.server``, ``flows.temporary_api``). Prints per round and the median: the
wall and CPU time of the imports, the time spent in collections (``gc.callbacks``) and their
number.

    python benchmarks/import_gc.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent

#: Imported by the child; ``{off}`` is True or False.
CHILD = """
import gc, json, time
spent, began = [0.0], [0.0]
def timed(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        spent[0] += time.perf_counter() - began[0]
gc.callbacks.append(timed)
if {off}:
    gc.disable()
wall, cpu = time.perf_counter(), time.process_time()
{imports}
print(json.dumps({{"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "gc": spent[0], "collections": sum(s["collections"] for s in gc.get_stats())}}))
"""
IMPORTS = {
    "command": """
import scipy.special
import flows.cli
from flows.tune import tune
from tasks.gate import import_now
import_now()
from tasks.model_io import import_now as import_model_io
import_model_io()
import model_registry.store
import mlflow.store.model_registry.sqlalchemy_store, mlflow.store.tracking.sqlalchemy_store
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
""",
    "server": "import prefect.server.api.server",
}


def _once(what: str, off: bool) -> dict[str, float]:
    code = CHILD.format(off=off, imports=IMPORTS[what])
    env = {**os.environ, "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode:
        raise SystemExit(f"import_gc.py: the {what} imports failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    load = os.getloadavg()
    runs: dict[tuple[str, bool], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for what in IMPORTS:
            for off in ((False, True) if r % 2 == 0 else (True, False)):
                runs.setdefault((what, off), []).append(_once(what, off))
        print(f"round {r + 1} done", flush=True)
    table = Table(title=f"imports with the collector on and off, {args.rounds} rounds "
                        f"(median; load {load[0]:.2f} -> {os.getloadavg()[0]:.2f})")
    for col in ("imports of", "collector", "wall s, each round", "wall s", "CPU s",
                "in collections s", "collections"):
        table.add_column(col)
    for (what, off), got in runs.items():
        table.add_row(what, "off" if off else "on",
                      " ".join(f"{g['wall']:.2f}" for g in got),
                      *(f"{statistics.median(g[k] for g in got):.2f}"
                        for k in ("wall", "cpu", "gc")),
                      f"{statistics.median(g['collections'] for g in got):.0f}",
                      end_section=off)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()

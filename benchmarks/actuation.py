"""Actuation on a live instance under a steady load: false rollbacks, missed regressions, and the
time from the apply to the decision.

    python benchmarks/actuation.py --target redis --applies 20 --windows 5 --window-s 2

Starts one instance of ``--target`` with its background load (``targets.live_daemon``), then
alternates, ``--applies`` times each (after ``--warmup`` seconds of load): a config equal in
effect to the current one (a knob the workload does not feel, moved to the other of two values)
and a regressing one (the issue's: Redis an fsync on every write, PostgreSQL a long commit delay,
synthetic a config far from the optimum). Each is one actuation as ``knobflow apply`` runs it
(``tasks.actuate``: windows before, apply, windows after, the test and the trigger rules, keep or
roll back), without the Prefect flow around it. A rollback of the neutral config is a false
rollback; a kept regressing config is a missed regression. A rolled-back config becomes a learned
rule of the service, which would refuse it the next time: the benchmark forgets the learned rules
before each apply, and waits one observation's length after a rollback (a system recovering from
a slow spell runs fast for a while: PostgreSQL after a long commit delay). Prints a table, saves
a plot (``--plot``) of each apply's after/before ratio.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Per target: the neutral pair (applied alternately) and the regressing config.
CASES: dict[str, dict[str, Any]] = {
    "redis": {"neutral": [{"hz": 11}, {"hz": 10}],
              "regress": {"appendonly": True, "appendfsync": "always"},
              # short benchmark loops: a window sees SETs and GETs, not one of them
              "workload": {"requests": 100000}},
    "postgres": {"neutral": [{"random_page_cost": 4.1}, {"random_page_cost": 4.0}],
                 "regress": {"commit_delay": 100000, "commit_siblings": 1},
                 "workload": {"clients": 4}},
    "synthetic": {"neutral": [{"y": 39.81}, {"y": 1.0}],
                  "regress": {"x": 0.8}, "workload": {}},
}


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="actuation.py", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="redis", choices=sorted(CASES))
    parser.add_argument("--applies", type=int, default=20, help="applies of each kind")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of load before the first apply")
    parser.add_argument("--home", help="knobflow home (default: a temporary directory)")
    parser.add_argument("--plot", default=str(REPO / "benchmarks" / "actuation.png"))
    args = parser.parse_args(argv)
    if args.applies < 1 or args.windows < 2 or args.window_s <= 0:
        parser.error("--applies >= 1, --windows >= 2 and --window-s > 0")
    return args


def _one(home: Path, name: str, changes: dict[str, Any], args: argparse.Namespace,
         source: str) -> dict[str, Any]:
    from flows.apply import acting_on, apply_to
    from tasks.actlog import ActuationLog

    started = time.monotonic()
    # a rolled-back config becomes a learned rule, which refuses it the next time: forgotten
    # here, so that every regressing apply is decided anew
    for learned in (home / "rules").glob("*.learned.yaml"):
        learned.unlink()
    with acting_on(home, name, windows=args.windows, window_s=args.window_s) as act:
        result = apply_to(act, changes, source=source, tasks=False)
        log: ActuationLog = act.log
    decided = log.actuation(result["id"]).by_phase().get("decided", {}) \
        if result.get("id") else {}
    test = decided.get("test") or {}
    return {"kind": source, "outcome": result["outcome"], "ratio": test.get("ratio"),
            "p": test.get("p_value"), "decision_s": decided.get("seconds_to_decision"),
            "wall_s": time.monotonic() - started, "fired": decided.get("fired", [])}


def run(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    from targets.live import live_system
    from targets.live_daemon import launch, stop_launched
    from tasks.instances import Instance, InstanceStore

    case = CASES[args.target]
    home = Path(args.home or tempfile.mkdtemp(prefix="kf-actuation-"))
    store = InstanceStore(home)
    name = f"bench-{args.target}"
    system = home / "system"
    conn = launch(args.target, system, case["workload"])
    store.add(Instance(name=name, service=f"bench-{args.target}", target=args.target,
                       url=conn.url, secret_file=conn.secret_file, launched=True,
                       data_dir=system, workload=case["workload"]))
    rows: list[dict[str, Any]] = []
    try:
        console.print(f"warming up for {args.warmup:g} s (the load fills the data set)")
        time.sleep(args.warmup)
        live = live_system(conn)
        for i in range(args.applies):
            for kind in ("neutral", "regress"):
                current = live.read_config()
                changes = case["regress"] if kind == "regress" else next(
                    c for c in case["neutral"] if any(current.get(k) != v for k, v in c.items()))
                row = _one(home, name, dict(changes), args, kind)
                rows.append(row)
                if row["outcome"] == "rolled_back":  # the system recovers from the slow spell
                    time.sleep(args.windows * args.window_s)
                nan = float("nan")
                console.print(f"{i + 1:>3} {kind:<8} {row['outcome']:<12} ratio "
                              f"{row['ratio'] or nan:.3f}  p {row['p'] or nan:.2g}  decision "
                              f"{row['decision_s'] or nan:.1f} s", highlight=False)
    finally:
        stop_launched(system)
    return rows


def _table(rows: list[dict[str, Any]], args: argparse.Namespace, load: str) -> Table:
    table = Table(title=f"actuation on a live {args.target} instance: {args.windows} windows of "
                  f"{args.window_s:g} s before and after; {load}")
    for col in ("config", "applies", "kept", "rolled back", "other", "wrong decisions",
                "ratio median (min-max)", "apply to decision s, median (max)"):
        table.add_column(col)
    for kind, wrong in (("neutral", "rolled_back"), ("regress", "kept")):
        mine = [r for r in rows if r["kind"] == kind]
        ratios = [r["ratio"] for r in mine if r["ratio"] is not None]
        times = [r["decision_s"] for r in mine if r["decision_s"] is not None]
        count = {o: sum(r["outcome"] == o for r in mine) for o in ("kept", "rolled_back")}
        table.add_row(
            kind, str(len(mine)), str(count["kept"]), str(count["rolled_back"]),
            str(len(mine) - sum(count.values())),
            f"{sum(r['outcome'] == wrong for r in mine)} of {len(mine)}",
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            if ratios else "-",
            f"{statistics.median(times):.1f} ({max(times):.1f})" if times else "-")
    return table


def _plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for kind, color in (("neutral", "tab:blue"), ("regress", "tab:red")):
        pts = [(i, r["ratio"]) for i, r in enumerate(rows) if r["kind"] == kind and r["ratio"]]
        rolled = [(i, r["ratio"]) for i, r in enumerate(rows)
                  if r["kind"] == kind and r["ratio"] and r["outcome"] == "rolled_back"]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, label=kind, s=20)
        ax.scatter([p[0] for p in rolled], [p[1] for p in rolled], facecolors="none",
                   edgecolors="black", s=70, label=f"{kind}: rolled back")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("apply")
    ax.set_ylabel("objective after / before (means of the windows)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the instance is stopped on the way out (``run``'s finally)


def main(argv: list[str]) -> int:
    args = _args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    from targets.common.settings import quiet_environment

    quiet_environment()
    import os

    console = Console(width=150)
    load = f"load {os.getloadavg()[0]:.2f} at the start"
    rows = run(args, console)
    load += f", {os.getloadavg()[0]:.2f} at the end (2 cores)"
    console.print(_table(rows, args, load))
    _plot(rows, args.plot, f"{args.target}: {args.windows} x {args.window_s:g} s windows")
    console.print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

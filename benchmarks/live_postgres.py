"""A live PostgreSQL under pgbench: how much candidate configs change what observe() windows see.

Launches one instance (``targets.live_daemon.launch``: PostgreSQL 15 with no knob on its command
line, pgbench in the background), then, per round and per config: ``--windows`` windows of
``--seconds`` before, ``PostgresLive.apply`` (ALTER SYSTEM + pg_reload_conf), the same windows
after, and the config put back (read back equal to the defaults), then as long again to let the
load recover (after a slow config the next windows run fast for a while: autovacuum and the
background writer caught up). Every config is first checked
against the shipped rules (``RuleSet.for_target``, every policy on): none may block it.

    python benchmarks/live_postgres.py --rounds 3 --windows 5 --seconds 2

Prints per config: the rules that block it (none expected), and per round the mean tps before
and after, the windows' coefficient of variation, the ratio after/before and apply's seconds;
then each config's ratios (mean, min, max). Configs: ``random_page_cost`` 4.0 -> 4.1, equal in
effect on tpcb-like (its queries are primary-key look-ups whatever the cost), and three
``commit_delay`` waits with ``commit_siblings`` 1 (every commit waits for a group that one
sibling always makes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rules.ruleset import RuleSet
from targets.live import Window
from targets.live_daemon import launch, stop_launched
from targets.live_postgres import PostgresLive
from targets.postgres import PostgresTarget

CONFIGS: dict[str, dict[str, Any]] = {
    "random_page_cost=4.1": {"random_page_cost": 4.1},
    "commit_delay=100000": {"commit_delay": 100000, "commit_siblings": 1},
    "commit_delay=10000": {"commit_delay": 10000, "commit_siblings": 1},
    "commit_delay=2000": {"commit_delay": 2000, "commit_siblings": 1},
}


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def _cpu(windows: list[Window]) -> str:
    """The server's CPU seconds per second (the machine's load shows as steps in it)."""
    return f"{statistics.mean(w.counters.get('server_cpu_s_per_s', 0.0) for w in windows):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    workload = {"scale": args.scale, "clients": args.clients, "threads": 2,
                "builtin": "tpcb-like"}
    console = Console(width=140)
    rules = RuleSet.for_target(PostgresTarget, workload=workload, all_policies=True)
    for name, config in CONFIGS.items():
        blocking = [f.rule for f in rules.check(config).failures]
        console.print(f"{name}: rules blocking it: {blocking}")
    table = Table("round", "config", "before tps", "cv", "after tps", "cv", "ratio", "apply s",
                  "cpu/s before", "cpu/s after")
    ratios: dict[str, list[float]] = {name: [] for name in CONFIGS}
    root = Path(tempfile.mkdtemp(prefix="knobflow-live-pg-")) / "pg"
    try:
        live = PostgresLive(launch("postgres", root, workload))
        default = live.read_config()
        time.sleep(3)
        for round_ in range(args.rounds):
            for name, config in CONFIGS.items():
                first = live.observe(args.windows, args.seconds)
                started = time.monotonic()
                live.apply(config)
                took = time.monotonic() - started
                then = live.observe(args.windows, args.seconds)
                before, after = ([w.metrics["tps"] for w in ws] for ws in (first, then))
                live.apply({k: default[k] for k in config})
                assert live.read_config() == default
                time.sleep(args.windows * args.seconds)  # the load recovers from a slow config
                ratio = statistics.mean(after) / statistics.mean(before)
                ratios[name].append(ratio)
                table.add_row(str(round_), name, f"{statistics.mean(before):.0f}",
                              f"{_cv(before):.2f}", f"{statistics.mean(after):.0f}",
                              f"{_cv(after):.2f}", f"{ratio:.3f}", f"{took:.2f}", _cpu(first),
                              _cpu(then))
    finally:
        stop_launched(root)
    console.print(table)
    for name, values in ratios.items():
        console.print(f"{name}: ratio mean {statistics.mean(values):.3f}, min {min(values):.3f}, "
                      f"max {max(values):.3f}")


if __name__ == "__main__":
    main()

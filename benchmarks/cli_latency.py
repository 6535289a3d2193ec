"""Time from ``knobflow ...`` to its answer, for bad arguments and the help, in fresh processes.

Each case is the command a user types, run as a new ``python -m flows.cli`` process (the console
script's start-up included) in an empty folder; the time is the wall time until the process
exits, with its exit code and the first line it printed, and the CPU time the process used (user +
system: what the command costs, whatever else the machine runs; on a loaded machine the wall time
is longer by the time the process waited for a core). Every case runs ``--repeats`` times; the
table shows the median and the worst wall time and the median CPU time. ``python -c pass`` is the
interpreter's own start-up, the floor of any command.

    python benchmarks/cli_latency.py --repeats 10
    python benchmarks/cli_latency.py --repeats 10 --compare 34ab8f2   # this tree against a commit

``--compare REV`` checks ``REV`` out into a temporary git worktree and runs every case in both
trees in turn (A B, B A, ...), so the machine's load falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The cases: what a user types after ``knobflow`` (``{home}``: an empty state directory).
CASES: dict[str, list[str]] = {
    "tune sqlite --budget -3": ["tune", "sqlite", "--budget", "-3", "--home", "{home}"],
    "tune nosuch (unknown target)": ["tune", "nosuch", "--home", "{home}"],
    "tune sqlite --bogus (unknown option)": ["tune", "sqlite", "--bogus"],
    "tune sqlite --set-workload read_ratio": ["tune", "sqlite", "--set-workload", "read_ratio",
                                              "--home", "{home}"],
    "tune sqlite --set-workload read_ratio=2": ["tune", "sqlite", "--set-workload",
                                                "read_ratio=2", "--home", "{home}"],
    "knobflow --help": ["--help"],
    "tune --help": ["tune", "--help"],
    "knobflow --version": ["--version"],
}
FLOOR = "python -c pass (start-up)"


def run_case(tree: Path, args: list[str], folder: Path) -> tuple[float, int, str, float]:
    """One fresh process of ``knobflow ARGS`` with ``tree``'s code: wall seconds, exit code, the
    first line it printed (stderr first) and its CPU seconds."""
    command = ([sys.executable, "-c", "pass"] if not args else
               [sys.executable, "-m", "flows.cli",
                *(a.replace("{home}", str(folder / "home")) for a in args)])
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "100"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return seconds, done.returncode, said[0][:60] if said else "", cpu


def measure(trees: dict[str, Path], repeats: int) -> dict[str, dict[str, list]]:
    """``results[tree][case]``: a list of (seconds, exit code, first line), trees taken in turn."""
    cases = {FLOOR: [], **CASES}
    results: dict[str, dict[str, list]] = {label: {c: [] for c in cases} for label in trees}
    with tempfile.TemporaryDirectory(prefix="knobflow-cli-latency-") as tmp:
        for r in range(repeats):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for case, args in cases.items():
                for label in order:
                    folder = Path(tempfile.mkdtemp(dir=tmp))  # empty: no .knobflow, no state
                    results[label][case].append(run_case(trees[label], args, folder))
            print(f"round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return results


def print_table(results: dict[str, dict[str, list]], repeats: int) -> None:
    labels = list(results)
    width = max(len(c) for c in results[labels[0]])
    print(f"\n{'':<{width}}" + "".join(f" | {label[:30]:^30}" for label in labels))
    print(f"{'case':<{width}}" + f" | {'median':>7} {'max':>7} {'cpu':>6} {'exit':>6}"
          * len(labels))
    print("-" * (width + 33 * len(labels)))
    for case in results[labels[0]]:
        line = f"{case:<{width}}"
        for label in labels:
            runs = results[label][case]
            secs, cpu = [r[0] for r in runs], statistics.median(r[3] for r in runs)
            codes = ",".join(str(c) for c in sorted({r[1] for r in runs}))
            line += f" | {statistics.median(secs):6.2f}s {max(secs):6.2f}s {cpu:5.2f}s {codes:>6}"
        print(line)
    print(f"\n{repeats} fresh processes per case and tree: wall time until the process exits "
          "(median, max), CPU time it used (median), exit code")
    for label in labels:
        print(f"\nfirst line printed, {label}:")
        for case, runs in results[label].items():
            if case != FLOOR:
                print(f"  {case:<{width}}  {runs[-1][2]}")


def _describe(tree: Path) -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=tree, text=True,
                          capture_output=True, check=False).stdout.strip() or "this tree"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of every case (5)")
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be 1 or more, got {args.repeats}")
    if args.compare and subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.compare}^{{commit}}"], cwd=REPO,
            capture_output=True, check=False).returncode != 0:
        parser.error(f"--compare: {args.compare!r} is not a commit of {REPO}")
    trees = {_describe(REPO): REPO}
    if not args.compare:
        print_table(measure(trees, args.repeats), args.repeats)
        return
    with tempfile.TemporaryDirectory(prefix="knobflow-compare-") as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.compare],
                       cwd=REPO, check=True, capture_output=True)
        try:
            trees = {args.compare: other, **trees}
            print_table(measure(trees, args.repeats), args.repeats)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO,
                           check=False, capture_output=True)


if __name__ == "__main__":
    main()

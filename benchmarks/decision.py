"""How often the keep/rollback test (``tasks.decide.test_change``) calls a change worse, on
simulated noisy windows, next to the plain ratio of two means it replaces.

Windows before and after a change are drawn as ``level * (1 + noise * N(0, 1))`` (``gauss``) or
with, in addition, a 10 % chance per window of a 25 % dip (``spiky``: a checkpoint, a compaction,
a neighbour's burst). The change lowers the level by ``drop`` (0: no change at all). For each
setting the table gives the share of ``--reps`` seeded repetitions called worse:

* ``test``: ``test_change`` with the instance policy's defaults (alpha 0.01, minimum effect 5 %);
* ``ratio``: the plain rule "mean after / mean before < 0.95" on the same windows.

With ``drop`` 0 the share is the false-rollback rate; with a real drop, the detection rate.
Simulated windows, not a live system: ``benchmarks/actuation.py`` measures a live one.

    python benchmarks/decision.py [--reps 500] [--windows 3,5,8] [--seed 0]

Prints a table.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from tasks.decide import test_change as change_test

DROPS = (0.0, 0.03, 0.10, 0.30, 0.50)
NOISES = (("gauss", 0.03), ("gauss", 0.10), ("spiky", 0.03))


def windows(rng: np.random.Generator, level: float, n: int, model: str,
            noise: float) -> np.ndarray:
    values = level * (1 + noise * rng.standard_normal(n))
    if model == "spiky":
        values *= np.where(rng.random(n) < 0.10, 0.75, 1.0)
    return np.maximum(values, level * 0.01)


def rates(n: int, model: str, noise: float, drop: float, reps: int,
          seed: int) -> tuple[float, float]:
    """Shares of ``reps`` repetitions called worse by the test and by the plain ratio."""
    rng = np.random.default_rng(seed)
    test = ratio = 0
    for _ in range(reps):
        before = windows(rng, 1000.0, n, model, noise)
        after = windows(rng, 1000.0 * (1 - drop), n, model, noise)
        test += change_test(before, after, "maximize").worse
        ratio += after.mean() / before.mean() < 0.95
    return test / reps, ratio / reps


def main() -> None:
    parser = argparse.ArgumentParser(prog="decision.py", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--windows", default="3,5,8")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(w) for w in args.windows.split(",")]
    if args.reps < 1 or any(w < 2 for w in sizes):
        parser.error("--reps must be >= 1 and every --windows >= 2")
    started = time.perf_counter()
    table = Table(title=f"called worse, share of {args.reps} repetitions (test | plain ratio)")
    table.add_column("windows")
    table.add_column("noise")
    for drop in DROPS:
        table.add_column(f"drop {drop:.0%}", justify="right")
    for n in sizes:
        for model, noise in NOISES:
            cells = []
            for drop in DROPS:
                test, ratio = rates(n, model, noise, drop, args.reps, args.seed)
                cells.append(f"{test:.3f} | {ratio:.3f}")
            table.add_row(f"{n}+{n}", f"{model} {noise:.0%}", *cells)
    console = Console(width=120)
    console.print(table)
    console.print(f"{time.perf_counter() - started:.1f} s on {platform.node()} "
                  f"({platform.python_version()}, seed {args.seed})")


if __name__ == "__main__":
    main()

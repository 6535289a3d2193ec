"""How good and how fast ``knobflow recommend``'s computation is, on the synthetic target's known
surface (``model_registry.recommend.recommend``; no live system: the truth is the surface).

Per seed: three sibling instances ran 100 noisy trials each at workload shifts 0, 0.5 and 1; a
champion is trained on their table (LightGBM, a real MLflow store in a temporary folder). A live
instance runs the knob spec's defaults (threads 4) and serves a workload at shift 0, 0.25, ... 1;
for each, the recommendation is computed three ways: as shipped (a sibling's measured config wins
when predicted within ``MEASURED_BAND`` of the champion's best), with the champion alone
(``MEASURED_BAND = 0``), and without a champion (the closest workload's best measured config).
Reported per way and shift, as medians over the seeds: the pick's true throughput against the
surface's optimum (and the worst seed's) and against the current config, the predicted gain, and
the time per call; then per way over every shift and seed: the mean and the worst.

``--max-knobs K`` shows instead what a policy of at most K changed knobs per actuation (the
instances' default is 3) applies of the shipped pick, against the whole pick: the knobs the
champion predicts best, one at a time on top of the current config.

    python benchmarks/recommend.py [--seeds 5] [--shifts 0,0.25,0.5,0.75,1] [--max-knobs K]

Prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout (its tests/)
from model_registry.recommend import recommend
from rules.ruleset import RuleSet
from targets.synthetic import SyntheticTarget
from tasks.train import train_models
from tests.synthetic_rows import trial_table
from tuners.space import SearchSpace

SERVICE, OBJECTIVE = "orders-kv", "throughput"
WAYS = ("shipped", "champion alone", "no champion")
#: with --max-knobs K: the shipped pick, limited and whole
LIMITED = ("at most K knobs", "whole pick")


def champion_store(folder: Path, seed: int) -> tuple[str, pd.DataFrame]:
    """A store with a champion trained on three siblings' trials, and their table."""
    table = pd.concat([trial_table(100, seed=100 * seed + i, shift=shift, instance=f"kv-{i}",
                                   study=f"s{i}")
                       for i, shift in enumerate((0.0, 0.5, 1.0))], ignore_index=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    train_models(table, spec=SyntheticTarget.knob_spec(), objective=OBJECTIVE,
                 direction="maximize", service=SERVICE, instance="kv-0",
                 workload_fp={"shift": 0.5}, tracking_uri=uri, kinds=("lightgbm",))
    return uri, table


def one(way: str, uri: str, empty: str, table: pd.DataFrame, shift: float,
        max_knobs: int | None = None) -> dict[str, float]:
    """One recommendation and how good it truly is."""
    import model_registry.recommend as module

    spec = SyntheticTarget.knob_spec()
    current = {**spec.defaults(), "threads": 4}
    band = module.MEASURED_BAND
    module.MEASURED_BAND = 0.0 if way == "champion alone" else band
    try:
        start = time.perf_counter()
        rec = recommend(target_cls=SyntheticTarget, service=SERVICE, objective=OBJECTIVE,
                        current=current, fingerprint={"shift": shift}, table=table,
                        tracking_uri=empty if way == "no champion" else uri,
                        space=SearchSpace.full(spec), rules=RuleSet.for_target(SyntheticTarget),
                        max_knobs=max_knobs if way == "at most K knobs" else None)
        seconds = time.perf_counter() - start
    finally:
        module.MEASURED_BAND = band
    workload = {"shift": shift}
    truth = SyntheticTarget.true_value(rec.config, workload)
    return {"of_optimum": truth / SyntheticTarget.known_optimum_value(workload),
            "true_gain": truth / SyntheticTarget.true_value(current, workload),
            "predicted_gain": rec.predicted_gain or float("nan"), "seconds": seconds,
            "sibling": float(rec.source == "sibling"), "changes": float(len(rec.changes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shifts", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--max-knobs", type=int, default=None, metavar="K",
                        help="compare what a policy of at most K knobs per actuation applies")
    args = parser.parse_args()
    try:
        shifts = [float(s) for s in args.shifts.split(",")]
    except ValueError:
        parser.error(f"--shifts: {args.shifts!r} is not a comma-separated list of numbers")
    if args.seeds < 1 or not all(0.0 <= s <= 1.0 for s in shifts):
        parser.error("--seeds must be at least 1 and every shift in [0, 1]")
    if args.max_knobs is not None and args.max_knobs < 1:
        parser.error("--max-knobs must be at least 1")
    ways = WAYS if args.max_knobs is None else LIMITED
    results: dict[tuple[str, float], list[dict[str, float]]] = {}
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="kf-recommend-") as tmp:
            uri, table = champion_store(Path(tmp), seed)
            empty = f"sqlite:///{Path(tmp) / 'empty.db'}"
            for way in ways:
                for shift in shifts:
                    results.setdefault((way, shift), []).append(
                        one(way, uri, empty, table, shift, args.max_knobs))
    report(results, args.seeds, ways, args.max_knobs)


def report(results: dict[tuple[str, float], list[dict[str, float]]], seeds: int,
           ways: tuple[str, ...], max_knobs: int | None) -> None:
    limited = f", at most {max_knobs} knobs per actuation" if max_knobs else ""
    table = Table(title=f"recommend on the synthetic surface{limited}, medians over {seeds} seeds "
                        f"({platform.processor() or platform.machine()}, "
                        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    for col in ("way", "shift", "pick / optimum", "worst seed", "true gain", "predicted gain",
                "sibling picks", "knobs changed", "seconds per call"):
        table.add_column(col, justify="right" if col != "way" else "left")
    for (way, shift), rows in results.items():
        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        predicted = med("predicted_gain")
        table.add_row(way, f"{shift:g}", f"{med('of_optimum'):.3f}",
                      f"{min(r['of_optimum'] for r in rows):.3f}", f"{med('true_gain'):.2f}",
                      "-" if predicted != predicted else f"{predicted:.2f}",
                      f"{sum(r['sibling'] for r in rows):.0f}/{len(rows)}",
                      f"{med('changes'):g}", f"{med('seconds'):.2f}")
    console = Console(width=150)
    console.print(table)
    for way in ways:
        picks = [r["of_optimum"] for (w, _), rows in results.items() if w == way for r in rows]
        console.print(f"{way}: pick / optimum over {len(picks)} recommendations: mean "
                      f"{statistics.mean(picks):.3f}, worst {min(picks):.3f}")


if __name__ == "__main__":
    main()

"""Transfer: trials a second instance of a service needs to reach 95% of a cold start's gain.

Per target and seed S: instance ``a`` (workload 1) runs a cold job of ``budget_a`` trials in a
fresh ``--home``; after it the service's models are trained and the registry's champion is set.
Then instance ``b`` (workload 2) runs ``budget_b`` trials twice:

* ``transfer``: in a's home, transfer on (the champion's and a's best configs queued right after
  the default, trial 0);
* ``cold``: in a fresh home of its own, ``--no-transfer``.

Both ``b`` jobs run with ``--no-learned-rules`` (the rules a learned from its crashes would
otherwise reach only the transfer arm) and ``--no-train``, with the same ``--seed S``.

A ``b`` job's gain curve: best value so far / the default's value, per trial that ran (blocked
candidates never ran and are skipped; failed trials ran and count). The default's value is the
median of trial 0 and the verification's runs of the default (one noisy run would move every gain
of the job); with ``--baseline-every 1`` (SQLite) every value is already a ratio to a run of the
default just before it, so the default is 1. The target is 95% of G, G = the median over seeds of
the cold runs' final gains (one bar per target: a cold run that ended below the median is
censored too). Trials-to-target: the first trial (trial 0 counts as 1) whose best-so-far gain
reaches 0.95 G; budget + 1 when never (censored, marked ``>``). Also printed: the literal variant
(trial 0 alone as the default, each seed's own cold final gain as G). Goal (issue 6): the median
with transfer at most one third of the median without.

    python benchmarks/transfer.py --targets synthetic,sqlite --seeds 5 [--quick] [--jobs 2]
        [--shift-b 0.3] [--plot PNG] [--keep DIR [--reuse]]
    python benchmarks/transfer.py --targets synthetic-far,synthetic-chain --plot far.png

Synthetic: shift 0.0 for a, 0.3 for b (``--shift-b``), ``duration=0``, 40 + 40 trials. At 0.3
the workloads are three times as far apart as the fingerprints transfer counts as close, and the
optimum moves in five knobs (x 0.25 -> 0.40, y 1.3 -> 4.5, buffer 1 -> 1.9 MiB, mode alpha ->
gamma with 32 threads and compression); a's optimum is 96 % of b's. ``--shift-b 0.6`` is the far
case (setup ``synthetic-far``): a's optimum is 79 % of b's there, and a champion trained on one
workload cannot tell where the optimum went. Setup ``synthetic-chain`` is the far case with one
more sibling, ``a2`` at shift 0.3 (40 trials, after a, before b): the service has seen a workload
between. SQLite:
read_ratio 0.2 for a, 0.95 for b, 20,000 rows and 50,000 operations, 25 + 20 trials, homes (and
so the databases) on a tmpfs (``--sqlite-dir``, default /dev/shm) and ``--baseline-every 1``: on
the machine's disk the default config's speed followed the fsync latency, which swung 17,000 to
120,000 ops/s within minutes, far more than the 5 % this measures. Both: ``--verify-repeats 2``.
Synthetic jobs run two at a time (``--jobs``), SQLite jobs one at a time (``--sqlite-jobs``) so
that they do not disturb each other's timings.
``--keep DIR`` keeps every job's home; ``--reuse`` reports on them again without running.
Prints a table per target and saves ``benchmarks/transfer.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ARMS = ("cold", "transfer")
SHARE = 0.95  # of the cold start's final gain
GOAL = 1 / 3  # transfer's median trials-to-target / cold's
REUSE = False  # --reuse: read the jobs of an earlier --keep run instead of running them
NOISE_RUNS: list[str] = []  # --noise-runs N: every job's noise check (0: none, as before it)


@dataclass
class Setup:
    """One target's experiment: workloads of a and b, budgets, fixed workload keys."""

    target: str
    workload_a: dict[str, Any]
    workload_b: dict[str, Any]
    common: dict[str, Any]
    budget_a: int
    budget_b: int
    extra: list[str] = field(default_factory=list)
    #: more sibling instances (a2, a3, ...) that run after a, before b, in the transfer arm
    more: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""  # the setup's name (--targets); the target's when empty

    @property
    def key(self) -> str:
        return self.name or self.target


SETUPS = {
    "synthetic": Setup("synthetic", {"shift": 0.0}, {"shift": 0.3}, {"duration": 0},
                       budget_a=40, budget_b=40, extra=["--verify-repeats", "2"]),
    # the default config's speed follows the disk's fsync latency, which drifts on a shared
    # machine: every trial is judged against a run of the default just before it
    "sqlite": Setup("sqlite", {"read_ratio": 0.2}, {"read_ratio": 0.95},
                    {"rows": 20000, "ops": 50000}, budget_a=25, budget_b=20,
                    extra=["--verify-repeats", "2", "--baseline-every", "1"]),
}
SETUPS["synthetic-far"] = replace(SETUPS["synthetic"], workload_b={"shift": 0.6},
                                  name="synthetic-far")
SETUPS["synthetic-chain"] = replace(SETUPS["synthetic"], workload_b={"shift": 0.6},
                                    more=[{"shift": 0.3}], name="synthetic-chain")
QUICK = {
    "synthetic": {"budget_a": 20, "budget_b": 15},
    "sqlite": {"budget_a": 12, "budget_b": 8, "common": {"rows": 5000, "ops": 10000}},
}


@dataclass
class Run:
    """One job of instance b: its best-so-far curve and what transfer queued."""

    target: str
    seed: int
    arm: str
    summary: dict
    trials: list[int]  # trial numbers that ran, in order
    values: list[float | None]  # each trial's own value (None: failed)
    best: list[float]  # best value so far, per trial that ran
    maximize: bool
    relative: bool = False  # --baseline-every: each value is already a ratio to the default
    true_ratio: list[float] | None = None  # synthetic: best-so-far true value / optimum
    transfer: dict | None = None  # transfer.json of the job
    a_summary: dict | None = None  # the job of instance a (transfer arm)

    @property
    def trial0(self) -> float:
        return float(self.values[0])  # trial 0 measures the default config

    @property
    def default(self) -> float:
        """The run's default value: the median of trial 0 and the verification's measurements
        of the default at the end of the job (one noisy run of the default would move every
        gain of the run); 1 when every value is a ratio to a default run just before it."""
        if self.relative:
            return 1.0
        verified = self.summary.get("verify_default_values") or []
        return statistics.median([self.trial0, *verified])

    def gains(self, default: float | None = None) -> list[float]:
        """Best so far / ``default`` (this run's ``default`` unless given)."""
        d = self.default if default is None else default
        return [b / d if self.maximize else d / b for b in self.best]

    def to_target(self, goal: float, budget: int, default: float | None = None) -> tuple[int, bool]:
        """First trial (1-based, trials that ran) whose best-so-far gain reaches ``goal``;
        (budget + 1, True) when none does."""
        for i, gain in enumerate(self.gains(default), start=1):
            if gain >= goal:
                return i, False
        return budget + 1, True


def _workload_args(*workloads: dict[str, Any]) -> list[str]:
    merged: dict[str, Any] = {}
    for w in workloads:
        merged.update(w)
    return [x for k, v in merged.items() for x in ("--set-workload", f"{k}={v}")]


def run_job(setup: Setup, instance: str, workload: dict[str, Any], budget: int, seed: int,
            home: Path, flags: list[str]) -> dict:
    if REUSE:  # --reuse: the summary of the job an earlier --keep run left in ``home``
        found = [json.loads(p.read_text(encoding="utf-8"))
                 for p in sorted((home / "jobs").glob("*/result.json"))]
        found = [f for f in found if f["instance"] == instance]
        if len(found) != 1:
            raise SystemExit(f"{home}: {len(found)} finished jobs of instance {instance}")
        ran = found[0].get("workload") or {}
        wanted = {**setup.common, **workload}
        if any(k in ran and float(ran[k]) != float(v) for k, v in wanted.items()):
            raise SystemExit(f"{home}: instance {instance} ran workload {ran}, not {wanted}")
        return found[0]
    cmd = [sys.executable, "-m", "flows.cli", "tune", setup.target, "--instance", instance,
           "--budget", str(budget), "--tuner", "tpe",
           "--seed", str(seed), "--home", str(home), "--json", *setup.extra, *NOISE_RUNS,
           *_workload_args(setup.common, workload), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def read_run(setup: Setup, seed: int, arm: str, summary: dict, home: Path) -> Run:
    """The gain curve of a b job from its trial table (blocked trials are not in it)."""
    table = pd.read_parquet(summary["trial_table"])
    table["n"] = table["trial"].astype(int)
    table = table.sort_values("n")
    maximize = summary["direction"] == "maximize"
    first = table.iloc[0]
    if first["n"] != 0 or first["status"] != "ok":
        raise SystemExit(f"{setup.target} seed {seed} {arm}: trial 0 (the default) did not run")
    best, bests, values = None, [], []
    for row in table.itertuples():
        value = float(row.value) if row.status == "ok" else None
        values.append(value)
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        bests.append(best)
    ok = table["status"] == "ok"
    relative = bool(table.loc[ok, "baseline_value"].notna().any())
    run = Run(setup.target, seed, arm, summary, table["n"].tolist(), values, bests, maximize,
              relative)
    if setup.target == "synthetic":
        run.true_ratio = _true_ratio(table, {**setup.common, **setup.workload_b})
    path = home / "jobs" / summary["study_name"] / "transfer.json"
    if path.exists():
        run.transfer = json.loads(path.read_text(encoding="utf-8"))
    return run


def _true_ratio(table: pd.DataFrame, workload: dict[str, Any]) -> list[float]:
    from targets.synthetic import SyntheticTarget

    optimum = SyntheticTarget.known_optimum_value(workload)
    knobs = [c for c in table.columns if c.startswith("knob.")]
    best, out = 0.0, []
    for row in table.to_dict(orient="records"):
        if row["status"] == "ok":
            config = {c.removeprefix("knob."): row[c] for c in knobs}
            best = max(best, SyntheticTarget.true_value(config, workload))
        out.append(best / optimum)
    return out


def run_seed_transfer(setup: Setup, seed: int, root: Path) -> Run:
    """a's cold job, then b with transfer in the same home."""
    home = root / f"{setup.key}-{seed}-transfer"
    a = run_job(setup, "a", setup.workload_a, setup.budget_a, seed, home, [])
    for i, workload in enumerate(setup.more, start=2):  # siblings with other workloads
        run_job(setup, f"a{i}", workload, setup.budget_a, seed, home, ["--no-learned-rules"])
    b = run_job(setup, "b", setup.workload_b, setup.budget_b, seed, home,
                ["--no-learned-rules", "--no-train"])
    run = read_run(setup, seed, "transfer", b, home)
    run.a_summary = a
    return run


def run_seed_cold(setup: Setup, seed: int, root: Path) -> Run:
    home = root / f"{setup.key}-{seed}-cold"
    b = run_job(setup, "b", setup.workload_b, setup.budget_b, seed, home,
                ["--no-transfer", "--no-learned-rules", "--no-train"])
    return read_run(setup, seed, "cold", b, home)


def run_target(setup: Setup, seeds: int, jobs: int, root: Path) -> list[Run]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, setup, s, root) for s in range(seeds)
                   for fn in (run_seed_transfer, run_seed_cold)]
        return [f.result() for f in futures]


def figures_of(runs: list[Run], seeds: int, budget: int) -> dict[str, Any]:
    """Trials-to-target per arm and seed, their medians and ratio; the literal per-run variant."""
    mine = {(r.seed, r.arm): r for r in runs}
    gain_cold = statistics.median(mine[s, "cold"].gains()[-1] for s in range(seeds))
    out: dict[str, Any] = {"G": gain_cold, "ttt": {}, "censored": {}, "own": {}}
    for arm in ARMS:
        hits = [mine[s, arm].to_target(SHARE * gain_cold, budget) for s in range(seeds)]
        out["ttt"][arm] = [n for n, _ in hits]
        out["censored"][arm] = [c for _, c in hits]
        # literal variant: trial 0 alone as the default, each seed's own cold final gain as G
        out["own"][arm] = [
            mine[s, arm].to_target(SHARE * mine[s, "cold"].gains(mine[s, "cold"].trial0)[-1],
                                   budget, mine[s, arm].trial0)[0] for s in range(seeds)]
    out["median"] = {arm: statistics.median(out["ttt"][arm]) for arm in ARMS}
    out["ratio"] = out["median"]["transfer"] / out["median"]["cold"]
    out["own_median"] = {arm: statistics.median(out["own"][arm]) for arm in ARMS}
    out["own_ratio"] = out["own_median"]["transfer"] / out["own_median"]["cold"]
    if all(r.true_ratio for r in runs):  # synthetic: the same on the noiseless surface
        true_g = statistics.median(mine[s, "cold"].true_ratio[-1] for s in range(seeds))
        out["true"] = {arm: [next((i for i, v in enumerate(mine[s, arm].true_ratio, start=1)
                                   if v >= SHARE * true_g), budget + 1) for s in range(seeds)]
                       for arm in ARMS}
        out["true_G"] = true_g
    return out


def report(console: Console, setup: Setup, runs: list[Run], seeds: int) -> dict[str, Any]:
    """Print the target's table; return its figures."""
    mine = {(r.seed, r.arm): r for r in runs}
    budget = setup.budget_b
    fig = figures_of(runs, seeds, budget)
    gain_cold = fig["G"]
    work = ", ".join(f"{k}={v}" for k, v in setup.common.items())
    table = Table(title=f"{setup.key} ({work}): a {_w(setup.workload_a)}{_more(setup)} cold "
                        f"{setup.budget_a} trials, then b {_w(setup.workload_b)} {budget} trials; "
                        f"trials b needs to reach {SHARE:.0%} of G = {gain_cold:.3f} (median "
                        "final gain of the cold b runs; default = median of trial 0 and the "
                        "verification's default runs)")
    cols = ["seed", "cold", "transfer", "final gain cold", "final gain transfer",
            "transferred trials: gain / G", "sources", "champion (a): kind, held-out rho"]
    if setup.target == "synthetic":
        cols.insert(5, "true best/opt cold, transfer")
    for col in cols:
        table.add_column(col)
    for s in range(seeds):
        cold, tr = mine[s, "cold"], mine[s, "transfer"]
        cells = [f">{budget}" if fig["censored"][arm][s] else str(fig["ttt"][arm][s])
                 for arm in ARMS]
        queued = (tr.summary.get("transfer") or {}).get("trials") or []
        index = {n: i for i, n in enumerate(tr.trials)}
        seeded = [tr.values[index[n]] for n in queued if n in index]
        seeded_text = " ".join("fail" if v is None else f"{_gain(v, tr) / gain_cold:.2f}"
                               for v in seeded) or "-"
        sources = ",".join(x["source"][0] for x in (tr.transfer or {}).get("seeds", []))
        model = (tr.a_summary or {}).get("model") or {}
        metrics = (model.get("metrics") or {}).get(model.get("kind"), {})
        champ = (f"{model.get('kind')} v{model.get('version')}, "
                 f"{metrics.get('holdout_spearman', float('nan')):.2f}") if model.get("kind") \
            else str(model.get("skipped") or model.get("error") or "-")
        row = [str(s), *cells, f"{cold.gains()[-1]:.3f}", f"{tr.gains()[-1]:.3f}",
               seeded_text, sources or "-", champ]
        if setup.target == "synthetic":
            row.insert(5, f"{cold.true_ratio[-1]:.3f}, {tr.true_ratio[-1]:.3f}")
        table.add_row(*row)
    med = fig["median"]
    verdict = "[green]goal met[/green]" if fig["ratio"] <= GOAL else "[red]goal: <= 0.33[/red]"
    final_tr = statistics.median(mine[s, "transfer"].gains()[-1] for s in range(seeds))
    table.add_row("median", f"[bold]{med['cold']:g}[/bold]", f"[bold]{med['transfer']:g}[/bold]",
                  f"{gain_cold:.3f}", f"{final_tr:.3f}", f"ratio {fig['ratio']:.2f} {verdict}",
                  end_section=True)
    console.print(table)
    own = fig["own"]
    console.print(f"{setup.key}, literal variant (trial 0 alone as the default, each "
                  f"seed's own cold final gain as G): cold {own['cold']} (median "
                  f"{fig['own_median']['cold']:g}), transfer {own['transfer']} (median "
                  f"{fig['own_median']['transfer']:g}), ratio {fig['own_ratio']:.2f}",
                  soft_wrap=True)
    if "true" in fig:
        true = fig["true"]
        med_true = {arm: statistics.median(true[arm]) for arm in ARMS}
        console.print(f"{setup.key}, noiseless variant (true best so far / optimum against "
                      f"{SHARE:.0%} of the cold runs' median final {fig['true_G']:.3f}): cold "
                      f"{true['cold']} (median {med_true['cold']:g}), transfer {true['transfer']} "
                      f"(median {med_true['transfer']:g}), ratio "
                      f"{med_true['transfer'] / med_true['cold']:.2f}", soft_wrap=True)
    _print_what_worked(console, setup, mine, seeds, gain_cold)
    for s in range(seeds):
        tr = mine[s, "transfer"]
        plan = tr.transfer or {}
        cold = mine[s, "cold"]
        console.print(f"{setup.key} seed {s}: default cold {cold.default:.6g} (trial 0 "
                      f"{cold.trial0:.6g}), transfer {tr.default:.6g} ({tr.trial0:.6g}); queued "
                      "trials "
                      f"{(tr.summary.get('transfer') or {}).get('trials')} "
                      f"({plan.get('reason') or 'ok'}); job s: a "
                      f"{(tr.a_summary or {}).get('duration_s', 0):.0f}, b transfer "
                      f"{tr.summary['duration_s']:.0f}, b cold "
                      f"{mine[s, 'cold'].summary['duration_s']:.0f}", soft_wrap=True)
    return fig


def _print_what_worked(console: Console, setup: Setup, mine: dict[tuple[int, str], Run],
                       seeds: int, gain_cold: float) -> None:
    """Which queued trials did the work: the siblings' best alone, the champion's picks (their
    gain, and their prediction against the best sibling measurement, comparable when both are
    the objective's own values), and final gains against cold."""
    first, picks, ratios, as_good = 0, [], [], 0
    for s in range(seeds):
        tr, cold = mine[s, "transfer"], mine[s, "cold"]
        seeds_ = (tr.transfer or {}).get("seeds", [])
        index = {n: i for i, n in enumerate(tr.trials)}
        queued = (tr.summary.get("transfer") or {}).get("trials") or []
        for n, seed in zip(queued, seeds_, strict=False):
            value = tr.values[index[n]] if n in index else None
            gain = None if value is None else _gain(value, tr) / gain_cold
            if n == queued[0] and seed["source"] == "sibling" and gain is not None \
                    and gain >= SHARE:
                first += 1
            if seed["source"] == "model" and gain is not None:
                picks.append(gain)
        measured = [x["measured"] for x in seeds_ if x["source"] == "sibling"]
        if measured and not tr.relative:
            best = max(measured) if tr.maximize else min(measured)
            ratios += [x["predicted"] / best for x in seeds_ if x["source"] == "model"]
        as_good += (tr.gains()[-1] >= cold.gains()[-1])
    text = f"{setup.key}: the first queued config (a sibling's best) reached the target alone in "
    text += f"{first} of {seeds} seeds; final gain with transfer >= cold in {as_good} of {seeds}"
    if picks:
        text += (f"; the champion's picks ran at {min(picks):.2f}-{max(picks):.2f} G "
                 f"(median {statistics.median(picks):.2f})")
    if ratios:
        q = np.quantile(ratios, [0.25, 0.5, 0.75, 1.0])
        text += (f"; predicted / best sibling measurement: quartiles {q[0]:.2f} {q[1]:.2f} "
                 f"{q[2]:.2f}, max {q[3]:.2f}")
    console.print(text, soft_wrap=True)


def _gain(value: float, run: Run) -> float:
    return value / run.default if run.maximize else run.default / value


def _more(setup: Setup) -> str:
    """The further siblings' workloads, for titles."""
    return "".join(f", a{i} {_w(w)}" for i, w in enumerate(setup.more, start=2))


def _w(workload: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in workload.items())


def _median_curve(runs: list[Run], budget: int) -> np.ndarray:
    curves = [r.gains() for r in runs]
    padded = [c + [c[-1]] * (budget - len(c)) for c in curves]
    return np.median(np.array([p[:budget] for p in padded]), axis=0)


def plot(results: dict[str, tuple[Setup, list[Run], dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), dpi=110,
                             squeeze=False)
    colours = {"cold": "#cc3311", "transfer": "#0077bb"}
    labels = {"cold": "cold (--no-transfer)", "transfer": "transfer"}
    for ax, (name, (setup, runs, figures)) in zip(axes[0], results.items(), strict=True):
        x = np.arange(1, setup.budget_b + 1)
        for arm in ARMS:
            mine = [r for r in runs if r.arm == arm]
            for r in mine:
                gains = r.gains()
                ax.step(np.arange(1, len(gains) + 1), gains, where="post",
                        color=colours[arm], alpha=0.18, linewidth=0.8)
            ax.step(x, _median_curve(mine, setup.budget_b), where="post",
                    color=colours[arm], linewidth=2,
                    label=f"{labels[arm]}, median (trials to target: "
                          f"{figures['median'][arm]:g})")
        ax.axhline(SHARE * figures["G"], color="#009988", linestyle="--",
                   label=f"target: {SHARE:.0%} of G = {figures['G']:.2f}, the cold runs' "
                         "median final gain")
        ax.set_xlabel("trials of instance b that ran (trial 0 = default is 1)")
        ax.set_ylabel("best so far / default")
        ax.set_title(f"{name}: a {_w(setup.workload_a)}{_more(setup)} -> b "
                     f"{_w(setup.workload_b)}, "
                     f"{len(runs) // 2} seeds (thin: one per run)\nmedian trials to target, "
                     f"transfer / cold: {figures['ratio']:.2f} (goal <= 0.33)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="synthetic,sqlite")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="small budgets and workloads, 2 seeds unless --seeds is given")
    parser.add_argument("--jobs", type=int, default=2, help="synthetic jobs running at once")
    parser.add_argument("--sqlite-jobs", type=int, default=1, help="SQLite jobs running at once")
    parser.add_argument("--shift-b", type=float, default=None,
                        help="synthetic: instance b's workload shift (default 0.3; a runs at 0.0)")
    parser.add_argument("--sqlite-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="SQLite homes (and so the databases) go under this directory "
                             "when --keep is not given (default /dev/shm, a tmpfs)")
    parser.add_argument("--keep", help="keep every job's home under this directory")
    parser.add_argument("--reuse", action="store_true",
                        help="report on the jobs an earlier run left in --keep, run nothing")
    parser.add_argument("--plot", default=str(HERE / "transfer.png"))
    parser.add_argument("--noise-runs", type=int, default=None,
                        help="every job's --noise-runs (0: no noise check, as before issue 13)")
    args = parser.parse_args()
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep DIR")
    unknown = [name for name in args.targets.split(",") if name not in SETUPS]
    if unknown:  # before any job runs
        parser.error(f"--targets: unknown setup {unknown[0]!r}; one of {', '.join(SETUPS)}")
    global REUSE
    REUSE = args.reuse
    if args.noise_runs is not None:
        NOISE_RUNS[:] = ["--noise-runs", str(args.noise_runs)]
    seeds = 2 if args.quick and "--seeds" not in sys.argv else args.seeds
    console = Console(width=170)
    results = {}
    with tempfile.TemporaryDirectory(prefix="knobflow-transfer-") as tmp, \
            tempfile.TemporaryDirectory(prefix="knobflow-transfer-", dir=args.sqlite_dir) as shm:
        for name in args.targets.split(","):
            root = Path(args.keep) if args.keep else Path(shm if name == "sqlite" else tmp)
            root.mkdir(parents=True, exist_ok=True)
            setup = SETUPS[name]
            if name == "synthetic" and args.shift_b is not None:
                setup = replace(setup, workload_b={"shift": args.shift_b})
            if args.quick:
                quick = QUICK[setup.target]
                setup = replace(setup, common={**setup.common, **quick.get("common", {})},
                                budget_a=quick["budget_a"], budget_b=quick["budget_b"])
            began, load = time.monotonic(), os.getloadavg()
            runs = run_target(setup, seeds,
                              args.sqlite_jobs if name == "sqlite" else args.jobs, root)
            figures = report(console, setup, runs, seeds)
            if not REUSE:
                jobs = (3 + len(setup.more)) * seeds
                console.print(f"{name}: {time.monotonic() - began:.0f} s for {jobs} jobs; "
                              f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
            results[name] = (setup, runs, figures)
    plot(results, Path(args.plot))


if __name__ == "__main__":
    main()

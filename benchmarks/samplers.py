"""The samplers side by side on problems with known optima: median simple regret after 30 and 60
trials, and each sampler's own time per suggestion on a history of 200 trials.

    nice -n 10 python benchmarks/samplers.py --seeds 10 --trials 60 [--smac] \
        [--first-seed 10] [--plot benchmarks/samplers.png]

``--first-seed`` runs other seeds than the ones a change was tuned on (0 to 9). Beside each
ratio to TPE's median regret, its 95 % interval from a paired bootstrap over the seeds (the same
resampled seeds for both samplers): on ``synthetic`` a median over 10 seeds moves by 0.4 of TPE's
from one set of seeds to the next (``benchmarks/RESULTS.md``), and the interval says so.

Contenders: knobflow's samplers (``tuners.samplers.make_sampler``: surrogate, tpe, random,
cmaes) and, with ``--smac``, SMAC3's HPO facade driven through its own ask/tell loop (it is not
wrapped as an Optuna sampler). Problems (``benchmarks/sampler_problems.py``; minimised; regret
is the best value found minus the optimum):

* ``branin`` (2 floats, optimum 0.397887) and ``hartmann6`` (6 floats, optimum -3.32237);
* ``mixed``: an int (log), a float (log), a float, a categorical and a bool knob whose best
  values depend on each other (the best int moves with the categorical, the best log-float with
  the float and the bool), optimum 0;
* ``synthetic`` (and ``synthetic-noisy``, the same with 3 % noise on a trial's mean, what
  real trials show on these machines; not one of the goal's problems, shown for what noise
  does): the synthetic target's whole space, evaluated in-process
  (``SyntheticTarget.true_value``, measured as a trial measures it: the mean of 5 intervals
  with 3 % noise each, about 1.3 % on the mean), with its failures (refused, crashing and
  hanging regions told as failed trials) and its shipped rules (a blocked candidate is told as
  in a job, ``tuners.trials.blocked_trial``, and does not count as a trial; the surrogate gets
  the rules as ``accept``); the default config first, as in a job. Regret: 1 - (true value of
  the best measured config) / optimum.

``mixed`` and ``synthetic`` are the problems with interacting knobs the goal is about.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from sampler_problems import (  # this folder
    INTERACTING,
    PROBLEMS,
    SYNTHETIC_WORKLOAD,
    TRUTH,
    Problem,
    problem,
)

from targets.synthetic import SyntheticTarget
from tuners.samplers import TUNERS, make_sampler
from tuners.trials import blocked_record, blocked_trial


def _regret_curve(prob: Problem, values: list[float | None], truths: list[float | None]
                  ) -> list[float]:
    """Simple regret after each trial: of the best measured value (synthetic: its true value)."""
    curve, best, best_truth = [], math.inf, None
    for value, truth in zip(values, truths, strict=True):
        if value is not None and value < best:
            best, best_truth = value, truth
        if prob.name.startswith("synthetic"):
            curve.append(prob.regret(best_truth) if best_truth is not None else 1.0)
        else:
            curve.append(prob.regret(best) if math.isfinite(best) else math.inf)
    return curve


def _best_params(values: list[float | None], tried: list[dict[str, Any]]) -> dict[str, Any]:
    """The params of the best measured value (the first if none ran)."""
    ran = [i for i, v in enumerate(values) if v is not None]
    return tried[min(ran, key=lambda i: values[i]) if ran else 0]  # type: ignore[arg-type]


#: One search: its regret curve, the seconds per suggestion, the params of its best value.
Run = tuple[list[float], float, dict[str, Any]]


def run_optuna(prob: Problem, tuner: str, seed: int, trials: int) -> Run:
    """One search with a knobflow sampler."""
    accept = prob.accept if tuner == "surrogate" else None
    study = optuna.create_study(sampler=make_sampler(tuner, seed, accept=accept))
    if prob.default is not None:
        study.enqueue_trial(prob.default)
    rng = random.Random(seed)
    values: list[float | None] = []
    truths: list[float | None] = []
    tried: list[dict[str, Any]] = []
    asking, blocked = 0.0, 0
    while len(values) < trials and blocked < 500:
        began = time.perf_counter()
        trial = study.ask(prob.dists)
        asking += time.perf_counter() - began
        params = dict(trial.params)
        if prob.accept is not None and not prob.accept(params):
            blocked += 1
            blocked_trial(study, trial, blocked_record(params, ["rules"], "blocked"))
            continue
        value = prob.evaluate(params, rng)
        truths.append(TRUTH.pop(id(params), None))
        values.append(value)
        tried.append(params)
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    return (_regret_curve(prob, values, truths), asking / max(1, len(study.trials)),
            _best_params(values, tried))


def run_smac(prob: Problem, seed: int, trials: int, tmp: Path) -> Run:
    """One search with SMAC3's HPO facade (its own loop; a failure is told as a crash)."""
    from ConfigSpace import (
        Categorical,
        ConfigurationSpace,
        Float,
        Integer,
    )
    from smac import HyperparameterOptimizationFacade, Scenario
    from smac.runhistory import StatusType, TrialValue

    cs = ConfigurationSpace(seed=seed)
    for name, d in prob.dists.items():
        if isinstance(d, FloatDistribution):
            cs.add(Float(name, (d.low, d.high), log=d.log))
        elif isinstance(d, IntDistribution):
            cs.add(Integer(name, (d.low, d.high), log=d.log))
        else:
            assert isinstance(d, CategoricalDistribution)
            cs.add(Categorical(name, [str(c) for c in d.choices]))
    scenario = Scenario(cs, deterministic=True, n_trials=trials + 50, seed=seed,
                        output_directory=tmp / f"smac-{prob.name}-{seed}")
    smac = HyperparameterOptimizationFacade(
        scenario, lambda config, seed=0: 0.0, overwrite=True, logging_level=40)
    rng = random.Random(seed)
    values: list[float | None] = []
    truths: list[float | None] = []
    tried: list[dict[str, Any]] = []
    asking = 0.0
    while len(values) < trials:
        began = time.perf_counter()
        info = smac.ask()
        asking += time.perf_counter() - began
        params = {}
        for name, d in prob.dists.items():
            raw = info.config[name]
            if isinstance(d, CategoricalDistribution):
                raw = next(c for c in d.choices if str(c) == raw)
            params[name] = raw
        # a blocked or failed config costs the worst value seen (SMAC's model needs a number)
        worst = max((v for v in values if v is not None), default=0.0)
        if prob.accept is not None and not prob.accept(params):
            smac.tell(info, TrialValue(cost=worst, status=StatusType.SUCCESS))
            continue
        value = prob.evaluate(params, rng)
        truths.append(TRUTH.pop(id(params), None))
        values.append(value)
        tried.append(params)
        smac.tell(info, TrialValue(cost=value if value is not None else worst))
    return _regret_curve(prob, values, truths), asking / trials, _best_params(values, tried)


def time_at(prob: Problem, tuner: str, history: int, asks: int = 5) -> float:
    """Seconds per suggestion of ``tuner`` on a study that already holds ``history`` trials."""
    seeded = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rng = random.Random(0)
    for _ in range(history):
        trial = seeded.ask(prob.dists)
        value = prob.evaluate(dict(trial.params), rng)
        seeded.tell(trial, value if value is not None else None,
                    state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
    study = optuna.create_study(sampler=make_sampler(tuner, 0, accept=prob.accept
                                                     if tuner == "surrogate" else None))
    study.add_trials(seeded.trials)
    began = time.perf_counter()
    for _ in range(asks):
        trial = study.ask(prob.dists)
        value = prob.evaluate(dict(trial.params), rng)
        study.tell(trial, value if value is not None else None,
                   state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
    return (time.perf_counter() - began) / asks


def ratio_interval(regrets: list[float], tpe: list[float], draws: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """95 % interval of median(regrets) / median(tpe) from a paired bootstrap over the seeds (the
    i-th of each list is seed i); NaN when the lists do not pair or TPE's median can be 0."""
    a, b = np.asarray(regrets, dtype=float), np.asarray(tpe, dtype=float)
    if len(a) != len(b) or len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan, math.nan
    picks = np.random.default_rng(seed).integers(len(a), size=(draws, len(a)))
    denominators = np.median(b[picks], axis=1)
    if (denominators <= 0).any():
        return math.nan, math.nan
    ratios = np.median(a[picks], axis=1) / denominators
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else (f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds --first-seed .. --first-seed + --seeds - 1")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--tuners", default="surrogate,tpe,random,cmaes")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--smac", action="store_true", help="also run SMAC3 (pip install smac)")
    parser.add_argument("--history", type=int, default=200,
                        help="trials in the study when the time per suggestion is measured")
    parser.add_argument("--plot", default="benchmarks/samplers.png")
    args = parser.parse_args()
    if args.seeds < 1 or args.trials < 30 or args.first_seed < 0:
        parser.error("--seeds must be at least 1, --trials at least 30 and --first-seed at "
                     "least 0")
    tuners = args.tuners.split(",")
    unknown = [t for t in tuners if t not in TUNERS]
    if unknown:
        parser.error(f"--tuners: unknown tuner '{unknown[0]}'; one of {', '.join(TUNERS)}")
    problems = args.problems.split(",")
    bad = [p for p in problems if p not in PROBLEMS]
    if bad:
        parser.error(f"--problems: unknown problem '{bad[0]}'; one of {', '.join(PROBLEMS)}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    contenders = tuners + (["smac3"] if args.smac else [])
    curves: dict[tuple[str, str], list[list[float]]] = {}
    ask_s: dict[tuple[str, str], list[float]] = {}
    bests: dict[tuple[str, str], list[dict[str, Any]]] = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="knobflow-samplers-") as tmp:
        for name in problems:
            prob = problem(name)
            for who in contenders:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    curve, per_ask, best = (run_smac(prob, seed, args.trials, Path(tmp))
                                            if who == "smac3"
                                            else run_optuna(prob, who, seed, args.trials))
                    curves.setdefault((name, who), []).append(curve)
                    bests.setdefault((name, who), []).append(best)
                    ask_s.setdefault((name, who), []).append(per_ask)
                print(f"{name} {who}: done ({time.monotonic() - began:.0f} s)", flush=True)
    at_history = {t: time_at(problem("mixed"), t, args.history) for t in tuners}

    table = Table(title=f"median simple regret over {args.seeds} seeds from {args.first_seed} "
                        "(lower is better); "
                        f"interacting: {', '.join(INTERACTING)}")
    for col in ("problem", "sampler", "regret @30", f"regret @{args.trials}",
                f"@{args.trials} / tpe", "95 % interval (seeds bootstrapped)",
                "s per suggestion (mean over the run)"):
        table.add_column(col)
    for name in problems:
        tpe_runs = curves.get((name, "tpe"), [[math.nan]])
        tpe = statistics.median(c[-1] for c in tpe_runs)
        for who in contenders:
            runs = curves[(name, who)]
            at30 = statistics.median(c[29] for c in runs)
            at_end = statistics.median(c[-1] for c in runs)
            ratio = at_end / tpe if tpe and math.isfinite(tpe) else math.nan
            low, high = ratio_interval([c[-1] for c in runs], [c[-1] for c in tpe_runs])
            table.add_row(name, who, _fmt(at30), _fmt(at_end),
                          f"{ratio:.2f}" if math.isfinite(ratio) else "-",
                          f"{low:.2f}-{high:.2f}" if math.isfinite(high) else "-",
                          f"{statistics.mean(ask_s[(name, who)]):.3f}", end_section=who ==
                          contenders[-1])
    console = Console(width=140)
    console.print(table)
    times = Table(title=f"own time per suggestion on a study of {args.history} trials (mixed)")
    times.add_column("sampler")
    times.add_column("s per suggestion")
    for t, s in at_history.items():
        times.add_row(t, f"{s:.3f}")
    console.print(times)
    for name in (n for n in problems if n.startswith("synthetic")):
        console.print(_losses_table(name, {w: bests[(name, w)] for w in contenders},
                                    args.trials))
    print(f"total {time.monotonic() - began:.0f} s")
    _plot(curves, problems, contenders, args.trials, args.seeds, Path(args.plot))


def _losses_table(name: str, bests: dict[str, list[dict[str, Any]]], trials: int) -> Table:
    """Where each sampler's regret on ``name`` (a synthetic problem) comes from: the median loss
    of its best config's true value, per factor of the surface (``SyntheticTarget.factors``),
    against the factor's best (the mode's: the best mode with compression)."""
    workload = SYNTHETIC_WORKLOAD
    top = {"mode": max(SyntheticTarget.factors({**SyntheticTarget.knob_spec().defaults(),
                                                "mode": m, "compress": c}, workload)["mode"]
                       for m in ("alpha", "beta", "gamma") for c in (False, True))}
    table = Table(title=f"{name}: the loss of the best config after {trials} trials, by "
                        "factor (median over seeds; 1 - factor / its best)")
    names = ("x", "y", "threads", "buffer_kb", "mode")
    for col in ("sampler", *names, "best mode (seeds)"):
        table.add_column(col)
    for who, configs in bests.items():
        losses = [SyntheticTarget.factors(c, workload) for c in configs]
        modes: dict[str, int] = {}
        for c in configs:
            key = f"{c['mode']}{'+compress' if c['compress'] else ''}"
            modes[key] = modes.get(key, 0) + 1
        medians = [statistics.median(1 - f[n] / top.get(n, 1.0) for f in losses) for n in names]
        counted = sorted(modes.items(), key=lambda kv: -kv[1])
        table.add_row(who, *(f"{m:.4f}" for m in medians),
                      ", ".join(f"{k} {v}" for k, v in counted))
    return table


def _plot(curves: dict[tuple[str, str], list[list[float]]], problems: list[str],
          contenders: list[str], trials: int, seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 3.6))
    for ax, name in zip(np.atleast_1d(axes), problems, strict=True):
        for who in contenders:
            runs = np.array(curves[(name, who)], dtype=float)
            med = np.median(runs, axis=0)
            ax.plot(range(1, trials + 1), np.maximum(med, 1e-6), label=who)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("trials")
        ax.axvline(30, color="grey", lw=0.5)
    np.atleast_1d(axes)[0].set_ylabel(f"median simple regret ({seeds} seeds)")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()

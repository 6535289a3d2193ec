"""Blocked candidates told to Optuna as infeasible with no value, against a stand-in value.

How a job tells the sampler about a candidate its rules block changed: before, the trial was
complete with a stand-in value (the worst value measured so far) and a ``rules`` constraint
above zero; now it is pruned, with the constraint and no value (``tuners.trials.blocked_trial``),
so no dashboard shows a measurement that was never made. This measures whether the search got
worse: the knobflow samplers (``tuners.samplers.make_sampler``) on the synthetic target's whole
space, its shipped rules plus rules that block a large region, the default config first as in a
job, until ``--budget`` candidates have run. A run is the synthetic target's noiseless value
times its 3 % noise, computed in-process (the rules, the sampler and the study are knobflow's;
only the trial process is left out, as it does not change what the sampler sees).

    python benchmarks/blocked.py --seeds 8 --budget 40 [--tuners tpe,cmaes,random]

Prints, per tuner and way of telling: candidates blocked per run (mean, max), the true value of
the best measured config over the known optimum (median, worst), and runs the guard stopped
(``MAX_BLOCKED_IN_A_ROW`` blocked in a row). For CMA-ES a third row: Optuna's own CmaEsSampler,
which ignores constraints and only draws a blocked candidate again, against knobflow's, which
reads blocked candidates as its worst draws (``tuners.samplers``).
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

import optuna
import yaml
from rich.console import Console
from rich.table import Table

from rules.language import RuleError
from rules.ruleset import RuleSet
from targets.synthetic import SyntheticTarget
from tasks.guard import CandidateGuard
from tuners.samplers import TUNERS, make_sampler
from tuners.space import SearchSpace
from tuners.trials import ATTR, BLOCKED_CONSTRAINT, blocked_record

#: Rules that block a large region beside the optimum (x = 0.25, threads 8-32, 1 MiB buffer):
#: about half of the space a random sampler draws from.
RULES = [
    {"id": "no-small-x", "kind": "forbid", "when": "x < 0.15", "message": "benchmark"},
    {"id": "few-threads", "kind": "forbid", "when": "threads > 40", "message": "benchmark"},
    {"id": "small-buffer", "kind": "forbid", "when": "buffer_kb > 16384", "message": "benchmark"},
]
WORKLOAD = {"shift": 0.0, "noise": 0.03}


def _imputed(study: optuna.Study, trial: optuna.trial.Trial, config: dict[str, Any],
             rules: list[str], worst: float | None) -> None:
    """How a blocked candidate was told before: complete, a constraint, the worst value seen."""
    trial.set_user_attr(ATTR, blocked_record(config, rules, "blocked"))
    trial.set_constraint(BLOCKED_CONSTRAINT, float(len(rules)))
    study.tell(trial, worst if worst is not None else 0.0)


def _sampler(tuner: str, seed: int, way: str) -> optuna.samplers.BaseSampler:
    if way == "plain":  # Optuna's own CMA-ES: a blocked draw is only drawn again
        return optuna.samplers.CmaEsSampler(
            seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False)
    return make_sampler(tuner, seed)


def one_run(tuner: str, seed: int, budget: int, way: str, rules: RuleSet) -> dict[str, Any]:
    """One search: ``budget`` candidates run, blocked ones told ``way``: "imputed" (before),
    "pruned" (now), "plain" (now, with Optuna's CMA-ES instead of knobflow's)."""
    space = SearchSpace.full(SyntheticTarget.knob_spec())
    study = optuna.create_study(direction="maximize", sampler=_sampler(tuner, seed, way))
    study.enqueue_trial(space.default_params())
    guard, rng = CandidateGuard(rules), random.Random(seed)
    sigma = math.sqrt(math.log(1.0 + WORKLOAD["noise"] ** 2))
    ran, blocked, worst, stopped = [], 0, None, False
    started = time.monotonic()
    while len(ran) < budget:
        trial = study.ask(space.distributions())
        config = space.config(trial.params)
        verdict = guard.check(config)
        if verdict.blocked:
            blocked += 1
            if way != "imputed":
                try:
                    guard.block(study, trial, config, verdict)
                except RuleError:
                    stopped = True
                    break
            else:
                _imputed(study, trial, config, [f.rule for f in verdict.errors], worst)
            continue
        guard.ran()
        true = SyntheticTarget.true_value(config, WORKLOAD)
        measured = true * math.exp(rng.gauss(-(sigma**2) / 2, sigma))
        worst = measured if worst is None else min(worst, measured)
        study.tell(trial, measured)
        ran.append((measured, true))
    best_true = max(ran)[1] if ran else 0.0
    return {"blocked": blocked, "ratio": best_true / SyntheticTarget.known_optimum_value(WORKLOAD),
            "stopped": stopped, "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--tuners", default="tpe,cmaes,random")
    args = parser.parse_args()
    if args.seeds < 1 or args.budget < 1:
        parser.error("--seeds and --budget must be at least 1")
    unknown = [t for t in args.tuners.split(",") if t not in TUNERS]
    if unknown:
        parser.error(f"--tuners: unknown tuner '{unknown[0]}'; one of {', '.join(TUNERS)}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler")
    with tempfile.TemporaryDirectory(prefix="knobflow-blocked-") as tmp:
        path = Path(tmp) / "block.yaml"
        path.write_text(yaml.safe_dump({"target": "synthetic", "rules": RULES}))
        rules = RuleSet.for_target(SyntheticTarget, [str(path)], workload=WORKLOAD)
        table = Table(title=f"synthetic target, {args.budget} candidates run, "
                            f"{args.seeds} seeds; rules: "
                            + ", ".join(r["when"] for r in RULES))
        for col in ("tuner", "blocked told as", "blocked per run (mean / max)",
                    "best true / optimum (median / worst)", "stopped", "s per run"):
            table.add_column(col)
        labels = {"imputed": "complete, worst value (before)", "pruned": "pruned, no value (now)",
                  "plain": "pruned, Optuna's own CMA-ES"}
        for tuner in args.tuners.split(","):
            ways = ["imputed", "pruned"] + (["plain"] if tuner == "cmaes" else [])
            for way in ways:
                runs = [one_run(tuner, s, args.budget, way, rules) for s in range(args.seeds)]
                counts = [r["blocked"] for r in runs]
                ratios = [r["ratio"] for r in runs]
                table.add_row(tuner, labels[way],
                              f"{statistics.mean(counts):.1f} / {max(counts)}",
                              f"{statistics.median(ratios):.3f} / {min(ratios):.3f}",
                              str(sum(r["stopped"] for r in runs)),
                              f"{statistics.mean(r['seconds'] for r in runs):.1f}",
                              end_section=way == ways[-1])
    Console(width=140).print(table)


if __name__ == "__main__":
    main()

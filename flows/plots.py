"""The plots a job leaves beside its result: the search's history (``history.png``).

A trial's point is one measurement (or the mean of its repeats); the dashed lines are the
verification's means, labelled so. When no config beat the default nothing was verified: no
dashed lines (the default would be drawn twice), and the title says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from flows.job import Job
from tasks.verify import Verification
from tuners.trials import ATTR, finished_trials

__all__ = ["history_figure", "plot_history"]


def _num(value: float) -> str:
    """A measured value for a legend: thousands separators, no exponent."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _measured(trial: FrozenTrial) -> float:
    """What a trial measured (with ``--baseline-every`` its value is a ratio to the default;
    the verification's lines are measurements)."""
    record = trial.user_attrs.get(ATTR, {})
    raw = record.get("raw_value") if record.get("baseline_value") else None
    return float(raw if raw is not None else trial.value)


def _verdict(verification: Verification | None, no_gain: bool) -> str:
    """The end of the plot's title: what the verification found."""
    if no_gain:
        return "; no config beat the default"
    if verification is None or verification.gain is None:
        return ""
    return (f"; gain {verification.gain:.2f}x [{verification.gain_low:.2f}, "
            f"{verification.gain_high:.2f}]" + ("" if verification.significant
                                                 else ", not clearly better"))


def plot_history(job: Job, study: optuna.Study, verification: Verification | None,
                 no_gain: bool = False) -> Path | None:
    """A PNG of the search (``history_figure``) in the job's folder; None without trials."""
    import matplotlib.pyplot as plt

    fig = history_figure(job, study, verification, no_gain)
    if fig is None:
        return None
    path = job.dir / "history.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def history_figure(job: Job, study: optuna.Study, verification: Verification | None,
                   no_gain: bool = False) -> Any:
    """The search as a matplotlib figure: each trial's value, the best so far, failures, and
    the verification's means (``no_gain``: no config beat the default, nothing verified)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    trials = finished_trials(study)
    if not trials:
        return None
    maximize = job.direction == "maximize"
    ok = [(t.number, _measured(t)) for t in trials if t.state == TrialState.COMPLETE]
    bad = [t.number for t in trials if t.state == TrialState.FAIL]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if ok:
        xs, ys = zip(*ok, strict=True)
        ax.scatter(xs, ys, s=18, color="#4477aa", label="trial", zorder=3)
        best_so_far, running = [], None
        for y in ys:
            running = y if running is None else (max(running, y) if maximize else min(running, y))
            best_so_far.append(running)
        ax.step(xs, best_so_far, where="post", color="#228833", label="best so far")
    if bad:
        floor = min(v for _, v in ok) if ok else 0.0
        ax.scatter(
            bad,
            [floor] * len(bad),
            marker="x",
            color="#cc3311",
            label=f"failed ({len(bad)})",
            zorder=3,
        )
    if verification is not None:
        runs = len(verification.best_values)
        for label, value, colour in (("default", verification.default_value, "#777777"),
                                     ("best", verification.best_value, "#ee7733")):
            if value is not None:
                ax.axhline(value, color=colour, linestyle="--",
                           label=f"{label}, verified mean of {runs} runs ({_num(value)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{job.objective} ({'higher' if maximize else 'lower'} is better)")
    ax.set_title(f"{job.target} / {job.instance}: {job.tuner}, {len(trials)} trials"
                 + _verdict(verification, no_gain), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig

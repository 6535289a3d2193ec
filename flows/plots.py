"""The plots a job leaves beside its result: the search's history (``history.png``)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from flows.job import Job
from tasks.verify import Verification
from tuners.trials import finished_trials

__all__ = ["plot_history"]


def _num(value: float) -> str:
    """A measured value for a legend: thousands separators, no exponent."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot_history(job: Job, study: optuna.Study, verification: Verification | None) -> Path | None:
    """A PNG of the search: each trial's value, the best so far, failures, and the verification."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    trials = finished_trials(study)
    if not trials:
        return None
    maximize = job.direction == "maximize"
    ok = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
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
    for label, value, colour in (
        ("default", verification.default_value if verification else None, "#777777"),
        ("best", verification.best_value if verification else None, "#ee7733"),
    ):
        if value is not None:
            label = f"{label}, verified ({_num(value)})"
            ax.axhline(value, color=colour, linestyle="--", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{job.objective} ({'higher' if maximize else 'lower'} is better)")
    title = f"{job.target} / {job.instance}: {job.tuner}, {len(trials)} trials"
    if verification and verification.gain is not None:
        title += (
            f"; gain {verification.gain:.2f}x "
            f"[{verification.gain_low:.2f}, {verification.gain_high:.2f}]"
        )
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = job.dir / "history.png"
    fig.savefig(path)
    plt.close(fig)
    return path

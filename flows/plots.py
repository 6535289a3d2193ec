"""The plots of knobflow: a job's search history (``history.png``) and what ``knobflow report``
draws beside it (knob importance, predicted against measured, an instance's timeline).

A trial's point is one measurement (or the mean of its repeats); the dashed lines are the
verification's means, labelled so. When no config beat the default nothing was verified: no
dashed lines (the default would be drawn twice), and the title says so. The report's figures are
made with matplotlib's object API (no pyplot state); ``png`` turns any figure into PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from flows.job import Job
from tasks.verify import Verification
from tuners.trials import ATTR, finished_trials, is_pruned_early

__all__ = [
    "OUTCOME_COLOURS", "TimelineEvent", "history_figure", "importance_figure", "plot_history",
    "png", "predicted_figure", "timeline_figure",
]

#: The colour of each way an actuation can end (``tasks.actlog.Outcome``), and of one unfinished.
OUTCOME_COLOURS = {"kept": "#228833", "rolled_back": "#ee7733", "refused": "#aa3377",
                   "failed": "#cc3311", "dry_run": "#999999", "rejected": "#0077bb",
                   "unfinished": "#000000"}


def _num(value: float) -> str:
    """A measured value for a legend: thousands separators, no exponent."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _measured(trial: FrozenTrial) -> float:
    """What a trial measured (with ``--baseline-every`` its value is a ratio to the default;
    the verification's lines are measurements)."""
    record = trial.user_attrs.get(ATTR, {})
    raw = record.get("raw_value") if record.get("baseline_value") else None
    return float(raw if raw is not None else trial.values[0])


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
    pruned = [(t.number, t.value) for t in trials if is_pruned_early(t) and t.value is not None]
    if pruned:  # at the objective so far when the pruner stopped them
        ax.scatter(*zip(*pruned, strict=True), s=18, marker="v", color="#999999", zorder=3,
                   label=f"pruned early ({len(pruned)})")
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


def png(fig: Any) -> bytes:
    """``fig`` as PNG bytes (a pyplot figure is closed after)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)  # a pyplot figure (``history_figure``) is let go; for any other, a no-op
    return buffer.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def importance_figure(importance: Mapping[str, float], title: str, top: int = 20) -> Any:
    """A bar per knob, the most important on top (``top`` of them), each as a share of all."""
    total = sum(v for v in importance.values() if v > 0) or 1.0
    ranked = sorted(importance.items(), key=lambda kv: -kv[1])[:top][::-1]
    fig = _figure(7.0, 1.3 + 0.3 * max(1, len(ranked)))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in ranked], [max(v, 0.0) / total for _, v in ranked], color="#4477aa")
    ax.set_xlabel("share of the importance")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def predicted_figure(measured: Sequence[float], predicted: Sequence[float], objective: str,
                     title: str, trials: Sequence[str] = ()) -> Any:
    """Each trial's measured value against the model's prediction, with the line where they
    are equal; ``trials`` labels the points (at most 40 are labelled)."""
    from matplotlib.ticker import FuncFormatter

    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(measured, predicted, s=22, color="#4477aa", zorder=3, label="trial")
    low, high = min(*measured, *predicted), max(*measured, *predicted)
    ax.plot([low, high], [low, high], color="#777777", linestyle="--", label="predicted = measured")
    for label, x, y in list(zip(trials, measured, predicted, strict=False))[:40]:
        ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    ax.set_xlabel(f"measured {objective}")
    ax.set_ylabel(f"predicted {objective}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class TimelineEvent:
    """A point on an instance's timeline: an actuation (``kind`` its outcome) or a drift check
    (``kind`` "drift", "no drift", "reference": it recorded the reference, "invalid": its
    windows failed the gate)."""

    time: datetime
    kind: str
    label: str = ""


#: The colour of each kind of drift check (``flows.report_instance.DriftEvent.kind``).
_CHECKS = {"drift": "#cc3311", "no drift": "#bbbbbb", "reference": "#4477aa",
           "invalid": "#ddaa33"}


def timeline_figure(windows: Sequence[tuple[datetime, float, str]],
                    events: Sequence[TimelineEvent], objective: str, title: str) -> Any:
    """Two panels over one time axis: the objective per observation window (``windows``: time,
    value, "before" or "after" an actuation) and, below, the actuations coloured by outcome and
    the drift checks; each actuation is also a vertical line through the objective's panel."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig = _figure(9.0, 5.2)
    top, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for phase, colour in (("before", "#4477aa"), ("after", "#ee7733")):
        points = [(t, v) for t, v, p in windows if p == phase]
        if points:
            top.scatter(*zip(*points, strict=True), s=14, color=colour, zorder=3,
                        label=f"window {phase} an actuation")
    rows = {"actuation": 1.0, "drift check": 0.0}
    for kind in dict.fromkeys(e.kind for e in events):
        mine = [e for e in events if e.kind == kind]
        drift = kind in _CHECKS
        colour = _CHECKS.get(kind) or OUTCOME_COLOURS.get(kind, "#000000")
        strip.scatter([e.time for e in mine], [rows["drift check" if drift else "actuation"]]
                      * len(mine), marker="v" if kind == "drift" else "o", s=60 if drift else 70,
                      color=colour, label=kind.replace("_", " "), zorder=3)
        if kind not in _CHECKS or kind == "drift":  # a check that found nothing: no line
            for e in mine:
                top.axvline(e.time, color=colour, alpha=0.6, linestyle=":" if drift else "-")
    strip.set_yticks(list(rows.values()), list(rows))
    strip.set_ylim(-0.6, 1.6)
    locator = AutoDateLocator()
    strip.xaxis.set_major_locator(locator)
    strip.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    top.set_ylabel(objective)
    top.yaxis.set_major_formatter(lambda v, _: _num(v))
    top.set_title(title, fontsize=10)
    for ax in (top, strip):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig

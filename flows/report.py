"""The result of a tuning job: the summary (``--json``), the config files, and the history plot."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from flows.job import Job
from tasks.verify import Verification
from tuners.trials import ATTR, finished_trials


def _plain(value: Any) -> Any:
    """YAML/JSON-friendly scalars (numpy and friends become Python numbers)."""
    if hasattr(value, "item"):
        return value.item()
    return value


def _num(value: float) -> str:
    """A measured value for a legend: thousands separators, no exponent."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def write_config_files(
    job: Job, config: dict[str, Any], verification: Verification | None
) -> dict[str, str]:
    """Write the best config as YAML (knob -> value), and in the system's own format if any."""
    job.dir.mkdir(parents=True, exist_ok=True)
    if verification and verification.gain is not None:
        gain = (
            f"verified gain {verification.gain:.3f}x "
            f"[{verification.gain_low:.3f}, {verification.gain_high:.3f}] over the default"
        )
    else:
        gain = "not verified"
    header = (
        f"# knobflow best config for target '{job.target}', instance '{job.instance}'\n"
        f"# job {job.study_name}; objective {job.objective} ({job.direction}); {gain}\n"
    )
    paths = {}
    yaml_path = job.dir / "best.yaml"
    body = yaml.safe_dump({k: _plain(v) for k, v in config.items()}, sort_keys=False)
    yaml_path.write_text(header + body, encoding="utf-8")
    paths["best_config_file"] = str(yaml_path)
    native = job.target_cls.render_native(config)
    if native is not None and job.target_cls.native_suffix:
        native_path = job.dir / f"best{job.target_cls.native_suffix}"
        comment = "-- " if job.target_cls.native_suffix == ".sql" else "# "
        native_path.write_text(
            "".join(comment + line[2:] + "\n" for line in header.splitlines()) + native,
            encoding="utf-8",
        )
        paths["native_config_file"] = str(native_path)
    return paths


def summarize(
    job: Job,
    study: optuna.Study,
    best: optuna.trial.FrozenTrial | None,
    verification: Verification | None,
    files: dict[str, str],
    duration_s: float,
) -> dict[str, Any]:
    """The job's summary: what ``--json`` prints and ``result.json`` keeps."""
    done = finished_trials(study)
    failed = [t for t in done if t.state == TrialState.FAIL]
    best_config = best.user_attrs[ATTR]["config"] if best else None
    v = verification or Verification()
    summary: dict[str, Any] = {
        "target": job.target,
        "service": job.service,
        "instance": job.instance,
        "objective": job.objective,
        "direction": job.direction,
        "tuner": job.tuner,
        "n_trials": len(done),
        "n_failed": len(failed),
        "failure_classes": dict(Counter(t.user_attrs[ATTR]["failure_class"] for t in failed)),
        "best_trial": best.number if best else None,
        "best_config": best_config,
        "best_observed_value": best.value if best else None,
        "best_value": v.best_value,
        "default_value": v.default_value,
        "gain": v.gain,
        "gain_low": v.gain_low,
        "gain_high": v.gain_high,
        "gain_significant": v.significant,
        "verify_repeats": len(v.best_values),
        "verify_default_values": v.default_values,
        "verify_best_values": v.best_values,
        "verify_failures": v.failures,
        "workload": job.workload,
        "study_name": job.study_name,
        "mlflow_run_id": job.mlflow_run_id,
        "duration_s": round(duration_s, 2),
        **files,
    }
    target_cls = job.target_cls
    if hasattr(target_cls, "known_optimum_value"):
        summary["known_optimum_value"] = target_cls.known_optimum_value(job.workload)
        summary["best_true_value"] = (
            target_cls.true_value(best_config, job.workload) if best_config else None
        )
    return summary


def write_summary(job: Job, summary: dict[str, Any]) -> Path:
    path = job.dir / "result.json"
    path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return path


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

"""Where an instant trial's time goes inside a job: the steps of the exploration loop, timed.

One in-process ``tune`` of the synthetic target with instant trials (``duration=0``) after an
uncounted warm-up job (its own service), each step of the loop wrapped with a timer: the ask (and
in it the wait for the result before the last: the tell lag of 1), the sampler's own ask, the
rule check, the trial's Prefect task and its process, the cleaning held for the next trial's
start, the cleaning and tell, the Great Expectations gate, Optuna's tell. Prints per step how
often it ran, its median, 90th percentile and total; then the time from one trial's start to the
next (median, 90th percentile, longest) and the gaps over ``--stall`` seconds with the step that
took longest in each. Last, the CPU each trial of the exploration cost in the job's process (the
Great Expectations gate's share and the MLflow writer's child runs apart: both run beside the
loop, on threads that share the GIL with it) and in Prefect's temporary server (its task-run
records): on a 2-core machine their sum over 2 is a floor under the time per instant trial.
``--space whole`` (default) is the target's whole space with its shipped rules (some candidates
are blocked); ``narrow`` is ``overhead.py``'s space (none are).

    python benchmarks/trial_path.py --trials 60
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's code, whatever the installed one is
sys.path.insert(1, str(Path(__file__).resolve().parent))
from job_cost import _at_least  # noqa: E402  (this folder)
from overhead import SPACE  # noqa: E402

#: step name -> (module, class or None, attribute) wrapped with a timer; in the loop's order
STEPS = {
    "ask (with the wait)": ("tasks.explore", "Exploration", "_ask"),
    "wait for the tell before": ("tasks.tell_order", "TellOrder", "wait_turn"),
    "sampler's ask": ("optuna.study.study", "Study", "ask"),
    "rule check": ("tasks.explore", "Exploration", "_check"),
    "trial task (Prefect + process)": ("tasks.explore", "Exploration", "_run_one"),
    "trial process": ("tasks.trial_process", "TrialProcesses", "run"),
    "cleaning held for the next start": ("tasks.trial_process", "TrialProcesses",
                                         "wait_started"),
    "cleaning and tell": ("tasks.explore", "Exploration", "_tell"),
    "GE gate": ("tasks.gate", None, "validate_rows"),
    "Optuna's tell": ("optuna.study.study", "Study", "tell"),
}


def instrument(events: list[tuple[str, float, float]]) -> None:
    """Wrap each step of ``STEPS``; each call appends (step, start, end) to ``events``."""
    import importlib

    for step, (module, cls, name) in STEPS.items():
        owner: Any = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner

        def timed(fn: Callable[..., Any], step: str = step) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    events.append((step, began, time.perf_counter()))
            return wrapper
        setattr(owner, name, timed(getattr(owner, name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=_at_least(2), default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--space", choices=("whole", "narrow"), default="whole")
    parser.add_argument("--stall", type=float, default=0.5,
                        help="a gap between trial starts longer than this (s) is listed")
    args = parser.parse_args()
    for key, value in {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        os.environ.setdefault(key, value)

    from flows.tune import tune

    events: list[tuple[str, float, float]] = []
    instrument(events)
    home = Path(tempfile.mkdtemp(prefix="trial-path-"))
    options: dict[str, Any] = {"workload": {"duration": 0.0}, "home": str(home),
                               "seed": args.seed}
    if args.space == "narrow":
        space = home / "space.yaml"
        space.write_text(yaml.safe_dump(SPACE))
        options["space_file"] = str(space)
    console = Console()
    console.print(f"warm-up job (not counted), then {args.trials} instant trials; load "
                  f"{os.getloadavg()[0]:.2f}")
    tune("synthetic", budget=5, service="warm-up", **options)
    events.clear()
    cpu: dict[str, float] = {}
    count_cpu(cpu)
    summary = tune("synthetic", budget=args.trials, service="measured", **options)
    report(console, events, summary, args.stall)
    per = {k: v * 1000 / args.trials for k, v in cpu.items()}
    console.print(f"CPU per trial of the exploration: the job's process {per['job']:.0f} ms "
                  f"(the GE gate {per['gate']:.0f} ms of it, MLflow's child runs "
                  f"{per['tracking']:.0f} ms), Prefect's server {per['server']:.0f} ms; over 2 "
                  f"cores at best {(per['job'] + per['server']) / 2:.0f} ms per trial")


def count_cpu(cpu: dict[str, float]) -> None:
    """Add to ``cpu`` the CPU seconds of the exploration (``flows.tune.explore``) in this process
    (``job``), in the GE gate's calls (``gate``, the calling thread's), in the MLflow writer's
    child runs of the exploration's trials (``tracking``: its thread's, a part of ``job`` that
    shares the GIL with the loop) and in Prefect's server (``server``: the uvicorn process among
    this one's children)."""
    import psutil

    import flows.tune
    import tasks.gate
    import tasks.track

    me = psutil.Process()

    def used(proc: psutil.Process | None) -> float:
        if proc is None:
            return 0.0
        times = proc.cpu_times()
        return times.user + times.system

    def server() -> psutil.Process | None:
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "uvicorn" in " ".join(child.cmdline()):
                    return child
        return None

    explore, validate = flows.tune.explore, tasks.gate.validate_rows
    log_trial = tasks.track.JobTracker.log_trial
    cpu.update(job=0.0, gate=0.0, server=0.0, tracking=0.0)
    exploring = [False]
    trackers: list[Any] = []  # the trackers that wrote the exploration's child runs

    def counted_explore(*args: Any, **kwargs: Any) -> Any:
        srv = server()
        began = used(me), used(srv)
        exploring[0] = True
        try:
            return explore(*args, **kwargs)
        finally:
            exploring[0] = False
            for tracker in trackers:
                tracker.flush()  # the exploration's child runs, written: counted in ``job``
            cpu["job"] += used(me) - began[0]
            cpu["server"] += used(srv) - began[1]

    def counted_log_trial(self: Any, *args: Any, **kwargs: Any) -> None:
        if not exploring[0]:
            return log_trial(self, *args, **kwargs)
        if self not in trackers:
            trackers.append(self)
        queue = self._queue
        put = queue.put

        def timed_put(write: Callable[[], None]) -> None:
            def timed() -> None:
                began = time.thread_time()
                try:
                    write()
                finally:
                    cpu["tracking"] += time.thread_time() - began
            put(timed)

        queue.put = timed_put  # this call's write only
        try:
            return log_trial(self, *args, **kwargs)
        finally:
            del queue.put

    def counted_validate(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return validate(*args, **kwargs)
        finally:
            cpu["gate"] += time.thread_time() - began

    flows.tune.explore = counted_explore
    tasks.gate.validate_rows = counted_validate
    tasks.track.JobTracker.log_trial = counted_log_trial  # type: ignore[method-assign]


def report(console: Console, events: list[tuple[str, float, float]], summary: Any,
           stall: float) -> None:
    durations: dict[str, list[float]] = defaultdict(list)
    for step, began, ended in events:
        durations[step].append(ended - began)
    table = Table(title=f"the steps of {summary.n_trials} instant trials "
                        f"({summary.n_blocked} blocked; load {os.getloadavg()[0]:.2f})")
    for column in ("step", "calls", "median ms", "p90 ms", "total s"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step in STEPS:
        values = sorted(durations.get(step, []))
        if not values:
            continue
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        table.add_row(step, str(len(values)), f"{statistics.median(values) * 1000:.1f}",
                      f"{p90 * 1000:.1f}", f"{sum(values):.2f}")
    console.print(table)
    starts = sorted(b for s, b, _ in events if s == "trial task (Prefect + process)")
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(starts)]
    if not gaps:
        return
    spans = sorted(g for g, _, _ in gaps)
    console.print(f"trial start to the next: median {statistics.median(spans) * 1000:.1f} ms, "
                  f"p90 {spans[int(0.9 * (len(spans) - 1))] * 1000:.1f} ms, longest "
                  f"{spans[-1] * 1000:.0f} ms; trials_s / trials "
                  f"{summary.trials_s / max(1, summary.n_trials) * 1000:.1f} ms; tell lag max "
                  f"{summary.tell_lag_max}")
    long = sorted((g for g in gaps if g[0] > stall), reverse=True)
    console.print(f"gaps over {stall:g} s: {len(long)}")
    for gap, a, b in long[:5]:
        inside = [(e - s, step) for step, s, e in events
                  if a <= s < b and step != "ask (with the wait)"]
        took, step = max(inside) if inside else (0.0, "-")
        console.print(f"  {gap * 1000:.0f} ms: longest step in it: {step} ({took * 1000:.0f} ms)")


if __name__ == "__main__":
    main()

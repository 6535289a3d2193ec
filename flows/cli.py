"""The ``knobflow`` command: list targets, show knob specs, run tuning jobs.

Exit codes: 0 done, 1 failure (no usable result, a crash of knobflow itself), 2 bad input (a
one-line error that names the file or option, the field and the fix), 130 interrupted.
Heavy imports (Prefect, MLflow, Optuna) happen only in the commands that need them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_rules import rules_app, validate_command
from targets.common.errors import KnobflowError, fmt_value
from targets.common.settings import quiet_environment

app = typer.Typer(
    name="knobflow",
    help="Keep the configuration knobs of real systems tuned.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)
#: The --service option of commands that read or write a service's state.
SERVICE_OPTION = typer.Option(
    help="Service whose state to use (default: the target's name), as given to tune --service."
)
app.add_typer(rules_app, name="rules")
app.command("validate")(validate_command)


@app.command("targets")
def targets_command() -> None:
    """List the targets knobflow can tune (built-in and installed by entry point)."""
    from targets.registry import available_targets, load_target

    table = Table(title="knobflow targets")
    for col in ("target", "knobs", "objective", "metrics", "about"):
        table.add_column(col)
    for name in available_targets():
        try:
            cls = load_target(name)
            spec = cls.knob_spec()
        except Exception as exc:  # a broken plug-in must not hide the others
            table.add_row(name, "-", "-", "-", f"[red]cannot load: {exc}[/red]")
            continue
        about = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        table.add_row(name, str(len(spec)), cls.default_objective, ", ".join(cls.metrics), about)
    out.print(table)


@app.command("knobs")
def knobs_command(
    target: Annotated[str, typer.Argument(help="Target name, e.g. sqlite.")],
) -> None:
    """Show a target's knob spec as a table."""
    from targets.registry import load_target

    spec = load_target(target).knob_spec()
    table = Table(title=f"knobs of {target} ({spec.source})")
    for col in ("knob", "type", "range / values", "default", "log", "unit", "restart"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold", min_width=20)
    for k in spec:
        table.add_row(
            k.name,
            k.type,
            k.domain_text(),
            fmt_value(k.default),
            "yes" if k.log else "",
            k.unit,
            "yes" if k.restart else "",
            k.description,
        )
    out.print(table)


@app.command("import")
def import_command(
    target: Annotated[str, typer.Argument(help="Target the measurements belong to.")],
    file: Annotated[str, typer.Argument(help="CSV: knob and metric columns, one row per run.")],
    service: Annotated[str | None, SERVICE_OPTION] = None,
    home: Annotated[str | None, typer.Option(help="State directory (default ./.knobflow).")] = None,
) -> None:
    """Import an expert's measured configs; bad rows are rejected with reasons, good ones kept."""
    from pathlib import Path

    from flows.trials import expert_path
    from targets.common.settings import knobflow_home
    from targets.registry import load_target
    from tasks.expert import check_rows, merge_expert_rows
    from tuners.trials import read_parquet, write_parquet

    target_cls = load_target(target)
    result = check_rows(file, target_cls)
    root = knobflow_home(home)
    if result.rejected:
        table = Table(title=f"rows of {file} rejected")
        table.add_column("line", justify="right")
        table.add_column("reasons", overflow="fold")
        for line, reasons in result.rejected:
            table.add_row(str(line), "\n".join(reasons))
        out.print(table)
    if result.kept:
        store = expert_path(root, service or target)
        merged = merge_expert_rows(read_parquet(store), result.kept, f"expert:{Path(file).name}")
        write_parquet(merged, store)
    out.print(
        f"{len(result.kept)} rows kept (source=expert), {len(result.rejected)} rejected; expert "
        "rows stay out of model training unless --use-expert-data is given"
    )
    if not result.kept:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    target: Annotated[str, typer.Argument(help="Target whose trials to export.")],
    out_file: Annotated[str, typer.Option("--out", help="Parquet file to write.")],
    training: Annotated[
        bool, typer.Option(help="Only rows a model may learn from (clean trials).")
    ] = False,
    use_expert_data: Annotated[
        bool, typer.Option(help="With --training: keep the expert's imported rows.")
    ] = False,
    service: Annotated[str | None, SERVICE_OPTION] = None,
    home: Annotated[str | None, typer.Option(help="State directory (default ./.knobflow).")] = None,
) -> None:
    """Export the trial table of a target: every trial, or only what training may use."""
    from collections import Counter
    from pathlib import Path

    from flows.trials import service_table
    from targets.common.settings import knobflow_home
    from targets.registry import load_target
    from tuners.trials import training_rows, write_parquet

    load_target(target)
    table = service_table(knobflow_home(home), service or target)
    if training:
        table = training_rows(table, use_expert=use_expert_data)
    path = write_parquet(table, Path(out_file))
    counts = Counter(zip(table["source"], table["status"], strict=True))
    summary = ", ".join(f"{n} {src}/{status}" for (src, status), n in sorted(counts.items()))
    out.print(f"{len(table)} rows -> {path}" + (f" ({summary})" if summary else ""))


@app.command("check-target")
def check_target_command(
    target: Annotated[str, typer.Argument(help="Target name, e.g. your own plug-in's.")],
) -> None:
    """Run the target contract against TARGET with real trials (for authors of targets)."""
    import tempfile
    from pathlib import Path

    from flows.contract import CHECKS, ContractViolation, NotApplicable, variants

    table = Table(title=f"contract of target '{target}'")
    for col in ("variant", "check", "result"):
        table.add_column(col, overflow="fold")
    failed = 0
    for variant in variants(target):
        missing = variant.missing_executables()
        for label, check in CHECKS.items():
            if missing:
                table.add_row(variant.name, label, f"skipped: needs {', '.join(missing)}")
                continue
            with tempfile.TemporaryDirectory(prefix="knobflow-contract-") as tmp:
                try:
                    check(variant, Path(tmp))
                    result = "[green]passed[/green]"
                except NotApplicable as exc:
                    result = f"not applicable: {exc}"
                except ContractViolation as exc:
                    failed += 1
                    result = f"[red]FAILED[/red]: {exc}"
            table.add_row(variant.name, label, result)
    out.print(table)
    if failed:
        raise typer.Exit(1)


@app.command("tune")
def tune_command(
    target: Annotated[str, typer.Argument(help="Target name, e.g. sqlite.")],
    budget: Annotated[int | None, typer.Option(help="Trials to run (default 40).")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds after which no new trial starts.")
    ] = None,
    tuner: Annotated[str | None, typer.Option(help="tpe (default), random or cmaes.")] = None,
    instance: Annotated[str, typer.Option(help="Instance name; its data lives apart.")] = "local",
    service: Annotated[
        str | None,
        typer.Option(help="Service the instance belongs to; its instances share models, data "
                          "and learned rules (default: the target's name)."),
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="Instances running trials at once (default 1).")
    ] = None,
    workload: Annotated[str | None, typer.Option(help="Workload YAML file.")] = None,
    set_workload: Annotated[
        list[str] | None, typer.Option("--set-workload", help="KEY=VALUE workload parameter.")
    ] = None,
    objective: Annotated[str | None, typer.Option(help="Metric to optimize.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of sampler and noise (default 0).")] = None,
    space: Annotated[str | None, typer.Option(help="Search-space YAML (expert ranges).")] = None,
    knobs: Annotated[str | None, typer.Option(help="Comma-separated knobs to tune.")] = None,
    trial_timeout: Annotated[
        float | None, typer.Option(help="Hard timeout of one trial, seconds.")
    ] = None,
    verify_repeats: Annotated[
        int | None, typer.Option(help="Interleaved re-measurements of best and default (3).")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(help="Runs of every trial config; its value is their mean (1).")
    ] = None,
    repeat_until: Annotated[
        float | None,
        typer.Option(help="Repeat a trial until its 95% interval is within +- this fraction."),
    ] = None,
    max_repeats: Annotated[
        int | None, typer.Option(help="Most runs of one trial with --repeat-until (5).")
    ] = None,
    baseline_every: Annotated[
        int | None,
        typer.Option(help="Measure the default before every N-th trial; tell the tuner ratios."),
    ] = None,
    rules: Annotated[
        list[str] | None, typer.Option("--rules", help="Rule file of your own (repeatable).")
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="Turn on a rule policy, e.g. durability (repeatable)."),
    ] = None,
    no_learned_rules: Annotated[
        bool, typer.Option("--no-learned-rules", help="Neither use nor learn rules from failures.")
    ] = False,
    no_transfer: Annotated[
        bool, typer.Option("--no-transfer",
                           help="Start cold: do not use the models and best configs of sibling "
                                "instances.")
    ] = False,
    transfer_priors: Annotated[
        bool, typer.Option("--transfer-priors",
                           help="Also tell the tuner the siblings' trials whose workloads are "
                                "close, as prior observations.")
    ] = False,
    no_train: Annotated[
        bool, typer.Option("--no-train", help="Do not train the service's models after the job.")
    ] = False,
    resume: Annotated[bool, typer.Option(help="Continue the last unfinished job.")] = False,
    home: Annotated[str | None, typer.Option(help="State directory (default ./.knobflow).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as one JSON object.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Tune TARGET: explore configs, verify the best against the default, write it to a file."""
    from flows.job import build_job, find_resumable, parse_assignments
    from targets.common.settings import knobflow_home

    options: dict[str, Any] = {
        "instance": instance,
        "budget": budget,
        "time_budget": time_budget,
        "tuner": tuner,
        "parallel": parallel,
        "workload_file": workload,
        "workload": parse_assignments(set_workload or []) or None,
        "objective": objective,
        "seed": seed,
        "space_file": space,
        "knobs": [k.strip() for k in knobs.split(",") if k.strip()] if knobs else None,
        "trial_timeout": trial_timeout,
        "verify_repeats": verify_repeats,
        "repeats": repeats,
        "repeat_until": repeat_until,
        "max_repeats": max_repeats,
        "baseline_every": baseline_every,
        "rule_files": rules or None,
        "policies": policy or None,
        "learn_rules": False if no_learned_rules else None,
        "service": service,
        "transfer": False if no_transfer else None,
        "transfer_priors": True if transfer_priors else None,
        "train": False if no_train else None,
    }
    root = knobflow_home(home)
    # validate before the Prefect server starts: bad input answers in a second, not in thirty
    if resume:
        job = find_resumable(root, target, instance, service)
        given = {
            k: v
            for k, v in options.items()
            if v is not None
            and k not in ("instance", "service", "budget", "time_budget", "parallel")
        }
        if given:
            raise KnobflowError(
                f"--resume continues job {job.study_name} with its own settings; drop "
                + ", ".join(_FLAGS.get(k, "--" + k.replace("_", "-")) for k in given)
                + " (only --budget, --time-budget and --parallel may change)"
            )
    else:
        job = build_job(root, target, **{k: v for k, v in options.items() if v is not None})

    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.progress import TuneProgress
    from flows.tune import listeners, tune

    _start_embedded_prefect_server()
    progress = TuneProgress(err, job, resume=resume)
    listeners.append(progress.on_run)
    try:
        with progress:
            summary = tune(target=target, resume=resume, home=str(root), **options)
    finally:
        listeners.remove(progress.on_run)
    if as_json:
        out.print_json(json.dumps(summary, default=str)) if out.is_terminal else print(
            json.dumps(summary, default=str)
        )
    else:
        progress.print_summary(out, summary)
    if summary.get("best_config") is None or summary.get("gain") is None:
        raise typer.Exit(1)


#: option keys whose command-line flag is not just the key with dashes
_FLAGS = {"workload_file": "--workload", "space_file": "--space", "rule_files": "--rules",
          "policies": "--policy", "learn_rules": "--no-learned-rules",
          "transfer": "--no-transfer", "train": "--no-train",
          "transfer_priors": "--transfer-priors",
          "workload": "--set-workload"}


def _start_embedded_prefect_server() -> None:
    """Start Prefect's ephemeral API (when no server is configured) in a session of its own.

    Prefect starts it on first use as a child in our process group, so a Ctrl-C in the terminal
    killed it together with the job, and the job then spent minutes retrying to report its crash
    to a dead API. Started here in its own session it outlives the interrupt and is stopped at
    exit as usual; the flow's client reuses this instance (Prefect keeps one per process).
    """
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if server.running:
        return
    popen = subprocess.Popen

    def popen_own_session(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        return popen(*args, start_new_session=True, **kwargs)

    subprocess.Popen = popen_own_session  # type: ignore[misc] - only while the server starts
    try:
        server.start()
    finally:
        subprocess.Popen = popen  # type: ignore[misc]


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


_INTERRUPTED = "knobflow: interrupted; finished trials are kept (continue with --resume)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    quiet_environment()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop trials and keep the study on SIGTERM
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="knobflow", standalone_mode=False)
    except KnobflowError as exc:
        err.print(f"knobflow: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: bad option values, missing arguments
        err.print(
            f"knobflow: error: {exc.format_message()}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return getattr(exc, "exit_code", 2)
    except (KeyboardInterrupt, typer.Abort):
        err.print(_INTERRUPTED, markup=False)
        return 130
    except Exception as exc:
        err.print(
            f"knobflow: failed: {type(exc).__name__}: {exc}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        if os.environ.get("KNOBFLOW_DEBUG"):
            raise
        return 1
    if code == 130:  # typer turned a KeyboardInterrupt (Ctrl-C, SIGTERM) into Exit(130)
        err.print(_INTERRUPTED, markup=False)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``knobflow`` command: list targets, show knob specs, run tuning jobs.

Exit codes: 0 done, 1 failure (no usable result, a crash of knobflow itself), 2 bad input (a
one-line error that names the file or option, the field and the fix), 130 interrupted.
Heavy imports (Prefect, MLflow, Optuna, pandas) happen only in the commands that need them, and in
``tune`` only after its arguments were checked (``flows/inputs.py``): a typo answers at once.
How the commands word their help is ``flows/cli_help.py``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from flows.cli_approval import approvals_command, approve_command, reject_command
from flows.cli_doctor import doctor_command
from flows.cli_help import EXIT_CODES, HOME_OPTION, UNUSED_HOME_OPTION, PlainCommand, TuneCommand
from flows.cli_instance import instance_app
from flows.cli_live import apply_command, history_command, observe_command, recommend_command
from flows.cli_regression import check_regression_command
from flows.cli_report import report_command
from flows.cli_rules import rules_app, validate_command
from flows.cli_serve import serve_command
from flows.cli_service import service_app
from flows.cli_tune import tune_command
from flows.cli_warm import warm_command
from flows.cli_watch import watch_command
from targets.common.errors import EnvironmentFault, KnobflowError, fmt_value
from targets.common.settings import quiet_environment


class KnobflowCommand(TyperGroup):
    """The command group: every error becomes one line and an exit code, however it is run
    (the console script, ``python -m flows.cli``, typer's ``CliRunner`` in the tests)."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        words = list(args) if args is not None else sys.argv[1:]
        tune = words[:1] == ["tune"]  # only a job has finished trials to keep
        code = _exit_code(lambda: super(KnobflowCommand, self).main(
            args=args, prog_name=prog_name or "knobflow", complete_var=complete_var,
            standalone_mode=False, **extra), _INTERRUPTED if tune else "knobflow: interrupted")
        if standalone_mode:
            sys.exit(code)
        return code

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Exit codes"):
            blocked = ("3", "knobflow validate: a rule blocks the config; knobflow apply: the "
                       "change was refused (a rule, the policy, the system) or rejected by an "
                       "operator, nothing changed")
            formatter.write_dl([*EXIT_CODES[:3], blocked, *EXIT_CODES[3:]])


def _exit_code(run: Callable[[], Any], interrupted: str) -> int:
    """Run the command; its exit code, with any error said in one line on stderr (and
    ``interrupted`` on Ctrl-C or SIGTERM)."""
    err = Console(stderr=True)
    try:
        code = run()
    except KnobflowError as exc:
        err.print(f"knobflow: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: bad option values, missing arguments
        if type(exc).__name__ == "NoArgsIsHelpError":  # `knobflow`, `knobflow rules`: the help
            print(exc.format_message())
            return 0
        err.print(f"knobflow: error: {exc.format_message()}", markup=False, highlight=False,
                  soft_wrap=True)
        return getattr(exc, "exit_code", 2)
    except (KeyboardInterrupt, typer.Abort):
        err.print(interrupted, markup=False)
        return 130
    except EnvironmentFault as exc:  # the machine's fault: say what to do, no traceback
        err.print(f"knobflow: failed: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except BaseException as exc:  # and Prefect's TerminationSignal, out of its flow engine
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        if _SIGNALLED or _raised_by_an_interrupt(exc):
            err.print(interrupted, markup=False)
            return 130
        if not isinstance(exc, Exception):
            raise
        err.print(f"knobflow: failed: {type(exc).__name__}: {exc}", markup=False,
                  highlight=False, soft_wrap=True)
        if os.environ.get("KNOBFLOW_DEBUG"):
            raise
        return 1
    if code == 130:  # typer turned a KeyboardInterrupt (Ctrl-C, SIGTERM) into Exit(130)
        err.print(interrupted, markup=False)
    return code if isinstance(code, int) else 0


def _raised_by_an_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a Ctrl-C or SIGTERM (anywhere in its
    chain of causes and contexts): Prefect's task engine, interrupted before its task run exists,
    raises ``ValueError: Task run is not set`` from its crash handler in the interrupt's place,
    and its flow engine turns SIGTERM into its own ``TerminationSignal``. The command was
    interrupted, not failed."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        if isinstance(cause, KeyboardInterrupt) or any(
                c.__name__ == "TerminationSignal" and c.__module__.startswith("prefect")
                for c in type(cause).__mro__):
            return True
        seen.add(id(cause))
        todo += [cause.__cause__, cause.__context__]
    return False


_INTERRUPTED = "knobflow: interrupted; finished trials are kept (continue with --resume)"

app = typer.Typer(
    cls=KnobflowCommand,
    name="knobflow",
    help="Keep the configuration knobs of real systems tuned.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
#: The --service option of commands that read or write a service's state.
SERVICE_OPTION = typer.Option(
    help="Service whose state to use (default: the target's name), as given to tune --service."
)
app.add_typer(rules_app, name="rules")
app.command("validate", cls=PlainCommand)(validate_command)
app.command("tune", cls=TuneCommand)(tune_command)
app.add_typer(instance_app, name="instance")
app.add_typer(service_app, name="service")
for _name, _command in (("observe", observe_command), ("recommend", recommend_command),
                        ("apply", apply_command), ("history", history_command),
                        ("watch", watch_command), ("report", report_command),
                        ("check-regression", check_regression_command),
                        ("approve", approve_command), ("reject", reject_command),
                        ("approvals", approvals_command)):
    app.command(_name, cls=PlainCommand)(_command)
app.command("serve", cls=PlainCommand)(serve_command)
app.command("warm", cls=PlainCommand)(warm_command)
app.command("doctor", cls=PlainCommand)(doctor_command)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"knobflow {version('knobflow')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("knobflow (not installed: pip install -e .)")
        raise typer.Exit(0)


@app.callback()
def knobflow_options(
    show_version: Annotated[bool, typer.Option(
        "--version", help="Print knobflow's version and exit.", is_eager=True,
        callback=_print_version)] = False,
) -> None:
    """Keep the configuration knobs of real systems tuned."""


@app.command("targets", cls=PlainCommand)
def targets_command(home: Annotated[str | None, UNUSED_HOME_OPTION] = None) -> None:
    """List the targets knobflow can tune (built-in and installed by entry point)."""
    from rich.text import Text

    from targets.registry import available_targets, load_target

    table = Table(title="knobflow targets")
    for col in ("target", "knobs", "objective", "metrics", "about"):
        table.add_column(col)
    for name in available_targets():
        try:
            cls = load_target(name)
            spec = cls.knob_spec()
        except Exception as exc:  # a broken plug-in must not hide the others
            table.add_row(name, "-", "-", "-", Text(f"cannot load: {exc}", style="red"))
            continue
        about = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        about = about.replace("``", "")  # a docstring's reStructuredText, said plainly
        table.add_row(name, str(len(spec)), cls.default_objective, ", ".join(cls.metrics), about)
    out.print(table)


@app.command("knobs", cls=PlainCommand)
def knobs_command(
    target: Annotated[str, typer.Argument(help="Target name, e.g. sqlite.")],
    home: Annotated[str | None, UNUSED_HOME_OPTION] = None,
) -> None:
    """Show a target's knobs: name, type, range or values, default, unit, and what each does."""
    from rich import box
    from rich.text import Text

    from targets.registry import load_target

    spec = load_target(target).knob_spec()
    # two columns, so it reads at 80 or 100 columns: the name, never broken, and the rest,
    # wrapped at spaces under it
    table = Table(title=f"knobs of {target} ({spec.source})", box=box.SIMPLE_HEAD,
                  padding=(0, 1, 1, 1), title_justify="left")
    table.add_column("knob", no_wrap=True, min_width=max((len(k.name) for k in spec), default=4))
    table.add_column("type, range / values, default; what it does", overflow="fold")
    for k in spec:
        facts = [f"{k.type} {k.domain_text()}", f"default {fmt_value(k.default)}"
                 + (f" {k.unit}" if k.unit else "")]
        facts += [word for flag, word in ((k.log, "log scale"),
                                          (k.restart, "needs a restart")) if flag]
        cell = Text("; ".join(facts))
        if k.description:
            cell.append("\n" + k.description, style="dim")
        table.add_row(k.name, cell)
    out.print(table)


@app.command("import", cls=PlainCommand)
def import_command(
    target: Annotated[str, typer.Argument(help="Target the measurements belong to.")],
    file: Annotated[str, typer.Argument(help="CSV: knob and metric columns, one row per run.")],
    service: Annotated[str | None, SERVICE_OPTION] = None,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Import an expert's measured configs; bad rows are rejected with reasons, good ones kept.

    The file is checked whole before anything is stored (exit 2: too big, not a regular file, a
    header or row that is not the target's CSV); the expert table is rewritten atomically, under
    a lock, so imports running together keep each other's rows."""
    from pathlib import Path

    from flows.trials import updating_expert
    from targets.common.files import display_path
    from targets.common.settings import knobflow_home
    from targets.registry import load_target
    from tasks.expert import check_rows, merge_expert_rows

    target_cls = load_target(target)
    result = check_rows(file, target_cls)
    root = knobflow_home(home)
    if result.rejected:
        table = Table(title=f"rows of {display_path(file)} rejected")
        table.add_column("line", justify="right")
        table.add_column("reasons", overflow="fold")
        for line, reasons in result.rejected:
            table.add_row(str(line), "\n".join(reasons))
        out.print(table)
    if result.kept:
        with updating_expert(root, service or target) as (rows, write):
            write(merge_expert_rows(rows, result.kept, f"expert:{Path(file).name}"))
    out.print(
        f"{len(result.kept)} rows kept (source=expert), {len(result.rejected)} rejected; expert "
        "rows stay out of model training unless --use-expert-data is given"
    )
    if not result.kept:
        raise typer.Exit(1)


@app.command("export", cls=PlainCommand)
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
    home: Annotated[str | None, HOME_OPTION] = None,
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
    out.print(f"{len(table)} rows -> {path}" + (f" ({summary})" if summary else ""),
              markup=False, highlight=False, soft_wrap=True)  # one line, the path whole


@app.command("check-target", cls=PlainCommand)
def check_target_command(
    target: Annotated[str, typer.Argument(help="Target name, e.g. your own plug-in's.")],
    home: Annotated[str | None, typer.Option(
        metavar="DIR", help="Run the trials in a temporary folder under DIR/contract, removed "
        "after (default: in the system's temporary folder).")] = None,
) -> None:
    """Run the target contract against TARGET with real trials (for authors of targets; what
    it checks is in docs/targets.md)."""
    import tempfile
    from pathlib import Path

    from rich.markup import escape

    from flows.contract import CHECKS, ContractViolation, NotApplicable, variants
    from targets.common.settings import knobflow_home, writable_home

    scratch = None
    if home is not None:
        root = writable_home(knobflow_home(home))
        root.mkdir(parents=True, exist_ok=True, mode=0o700)  # as a job makes it: its owner's
        scratch = root / "contract"
        scratch.mkdir(exist_ok=True, mode=0o700)

    table = Table(title=f"contract of target '{target}'")
    for col in ("variant", "check", "result"):
        table.add_column(col, overflow="fold")
    failed = 0
    for variant in variants(target):
        missing = variant.missing_executables()
        for label, check in CHECKS.items():
            if missing:
                table.add_row(variant.name, label,
                              escape(f"skipped: needs {', '.join(missing)}"))
                continue
            with tempfile.TemporaryDirectory(prefix="knobflow-contract-", dir=scratch) as tmp:
                try:
                    check(variant, Path(tmp))
                    result = "[green]passed[/green]"
                except NotApplicable as exc:
                    result = f"not applicable: {escape(str(exc))}"
                except ContractViolation as exc:
                    failed += 1
                    result = f"[red]FAILED[/red]: {escape(str(exc))}"
            table.add_row(variant.name, label, result)
    out.print(table)
    if failed:
        raise typer.Exit(1)


#: The SIGTERMs this command has had: once one came, whatever error ends the command is the
#: interrupt's, however a library turned it into its own (``_exit_code``). A Ctrl-C is found in
#: the error's chain (``_raised_by_an_interrupt``).
_SIGNALLED: list[int] = []


def _raise_interrupt(signum: int, frame: Any) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    if argv is None:  # the process is this command: a job's time counts from its start
        from flows.timing import command_started, process_started

        command_started(process_started())
    try:
        quiet_environment()  # bad settings (KNOBFLOW_CONFIG, a secret file) stop every command
    except KnobflowError as exc:
        Console(stderr=True).print(f"knobflow: error: {exc}", markup=False, highlight=False,
                                   soft_wrap=True)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop trials and keep the study on SIGTERM
    # SIGINT keeps Python's own handler: asyncio.run (Prefect's serve) takes Ctrl-C gracefully
    # only while that one is installed
    return typer.main.get_command(app).main(args=argv, prog_name="knobflow",
                                            standalone_mode=False)


if __name__ == "__main__":
    sys.exit(main())

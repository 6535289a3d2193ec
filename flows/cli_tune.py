"""``knobflow tune``: its options are the job spec's fields (``flows/spec.py``), made here.

Each field of ``JobSpec`` becomes one option as the field declares it (a value, a repeated
option, ``K=V`` assignments, a comma list, a flag that turns an option on or off); only the
options given on the command line reach the spec, so ``--resume`` can tell which were given. The
help names what each option takes (``FILE``, ``KEY=VALUE``, ``[tpe|random|cmaes|nsga2|surrogate]``),
from the field's kind, name and choices.
The spec is checked before Prefect starts (bad input answers in a second, not in thirty); the
tune flow then builds and runs the job, and the progress bar hears of it through the flow's
``progress`` parameter.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.models import ParameterInfo

from flows import temporary_api
from flows.cli_help import HOME_OPTION
from flows.spec import Cli, JobSpec

__all__ = ["given_spec", "prefect_console", "spec_value", "tune_command"]

_KW = inspect.Parameter.KEYWORD_ONLY
#: Options of the command that are not options of the job.
_COMMAND_ONLY = [
    inspect.Parameter("resume", _KW, default=False, annotation=Annotated[
        bool, typer.Option("--resume", help="Continue the last unfinished job.")]),
    inspect.Parameter("home", _KW, default=None, annotation=Annotated[str | None, HOME_OPTION]),
    inspect.Parameter("as_json", _KW, default=False, annotation=Annotated[
        bool, typer.Option("--json", help="Print the result as one JSON object.")]),
    inspect.Parameter("verbose", _KW, default=False, annotation=Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")]),
]


def _metavar(name: str) -> str | None:
    """How the help names the value of option ``name`` (None: by its type, e.g. INTEGER)."""
    kind, flag = JobSpec.cli_kind(name), JobSpec.flag(name)
    extra = JobSpec.model_fields[name].json_schema_extra
    choices = extra.get("choices") if isinstance(extra, Mapping) else None
    if isinstance(choices, list) and choices:
        return "[" + "|".join(choices) + "]"
    if isinstance(extra, Mapping) and extra.get("metavar"):
        return str(extra["metavar"])
    if "file" in name:
        return "FILE"
    return {Cli.ASSIGNMENTS: "KEY=VALUE", Cli.COMMA_LIST: "NAME,...",
            Cli.REPEATED: flag.removeprefix("--").upper()}.get(kind)


def _cli_parameter(name: str) -> inspect.Parameter:
    """Spec field ``name`` as a typer parameter of the command."""
    field = JobSpec.model_fields[name]
    kind, help_text = JobSpec.cli_kind(name), field.description
    info: ParameterInfo
    if kind == Cli.ARGUMENT:
        return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 annotation=Annotated[str, typer.Argument(help=help_text)])
    info = typer.Option(JobSpec.flag(name), help=help_text, metavar=_metavar(name))
    default: Any = None
    if kind in (Cli.REPEATED, Cli.ASSIGNMENTS):
        annotation: Any = list[str] | None
    elif kind == Cli.COMMA_LIST:
        annotation = str | None
    elif kind in (Cli.OFF_FLAG, Cli.ON_FLAG):
        annotation, default = bool, False
    else:
        annotation, default = field.annotation, field.get_default(call_default_factory=True)
    return inspect.Parameter(name, _KW, annotation=Annotated[annotation, info], default=default)


def spec_value(name: str, value: Any) -> Any:
    """What the command line gave for ``name``, as the spec's field takes it."""
    from flows.inputs import parse_assignments

    kind = JobSpec.cli_kind(name)
    if kind == Cli.ASSIGNMENTS:
        return parse_assignments(value or [], JobSpec.flag(name)) or None
    if kind == Cli.COMMA_LIST:
        return [k.strip() for k in (value or "").split(",") if k.strip()] or None
    if kind == Cli.REPEATED:
        return list(value or [])
    if kind == Cli.OFF_FLAG:
        return not value
    return value


def given_spec(ctx: typer.Context, values: dict[str, Any]) -> JobSpec:
    """The job spec of the options given on the command line (defaults are not given)."""
    # by name: typer carries its own copy of click, with its own ParameterSource enum
    given = {name: spec_value(name, value) for name, value in values.items()
             if getattr(ctx.get_parameter_source(name), "name", None)
             not in ("DEFAULT", "DEFAULT_MAP")}
    return JobSpec.of(**given)


def tune_command(ctx: typer.Context, **values: Any) -> None:
    """Tune TARGET: explore configs, verify the best against the default, write it to a file."""
    resume, home, as_json, verbose = (values.pop(k) for k in
                                      ("resume", "home", "as_json", "verbose"))
    prefect_console(verbose)  # before Prefect is imported, and its handlers if it already is
    from flows.inputs import check_inputs
    from targets.common.settings import knobflow_home, tracking_uri, writable_home

    # what needs no stack first (the spec's own checks, the target's workload and metrics):
    # a typo answers in a fraction of a second, not after Prefect, MLflow and Optuna load
    spec = given_spec(ctx, values)
    check_inputs(spec)
    root = writable_home(knobflow_home(home))
    _import_scipy_special_first()  # before flows.job loads Prefect, pandas and MLflow
    from flows.job import check_spec
    from model_registry.store import check_reachable
    from model_registry.store import import_now as import_store

    check_spec(spec, root, resume)  # before Prefect's server starts: bad input answers at once
    check_reachable(tracking_uri(root))
    if spec.workers:  # the shared stack, before an embedded server is started
        from flows.worker import check_fleet

        check_fleet(root, spec.workers or 0)
    server_ready = temporary_api.begin()  # it starts while the flow's modules load
    from flows.entry import imports_done
    from flows.progress import TuneProgress, print_summary
    from flows.timing import command_phase, settle_last
    from flows.tune import JobFailed, tune
    from tasks.gate import import_now
    from tasks.model_io import import_now as import_model_io

    import_now()  # every job cleans with it: loaded while the server starts, not in a trial
    if spec.train:  # the training step's imports, likewise (skops, matplotlib, MLflow's)
        import_model_io()
    import_store(tracking_uri(root))  # MLflow's SQL stores, likewise
    imports_done()  # the garbage collector, off while they were made, is on again
    command_phase("imports")  # the process's start-up, the imports and the checks until now
    out, err = Console(), Console(stderr=True)
    began = time.perf_counter()
    server_ready()
    command_phase("server", time.perf_counter() - began)  # what the imports did not hide
    with TuneProgress(err, f"{spec.target}/{spec.instance}") as progress, _logs_above_bar(), \
            temporary_api.no_heartbeats_to_a_temporary_server():
        try:
            summary = tune(**spec.given(), resume=resume, home=str(root), progress=progress)
        except JobFailed as failed:  # the flow run is Failed; the summary says why (exit 1)
            summary = failed.summary
    settle_last(summary)  # the whole command's time, to the result printed
    if as_json:
        text = json.dumps(summary.to_dict(), default=str)
        out.print_json(text) if out.is_terminal else print(text)
    else:
        print_summary(out, summary)
        if summary.regression:  # --fail-on-regression: against the reference before the job
            out.print(f"regression check: {summary.regression['message']}", markup=False,
                      highlight=False, soft_wrap=True)
    if not summary.succeeded or summary.regressed:
        raise typer.Exit(1)


def _import_scipy_special_first() -> None:
    """Import ``scipy.special`` before Prefect, MLflow and pandas: skops' import (the training
    step's) looks for the module of each of scipy.special's 232 ufuncs by scanning the loaded
    modules in the order they were loaded, so it scans ~400 of them instead of ~2,000 (that
    import: 3.9-5.7 s -> 1.1-1.4 s on 2 cores at load 4). scikit-learn imports it anyway."""
    import scipy.special  # noqa: F401


_PARAMETERS = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 annotation=typer.Context),
               *(_cli_parameter(name) for name in JobSpec.model_fields
                 if JobSpec.cli_kind(name) != Cli.FLOW_ONLY), *_COMMAND_ONLY]
tune_command.__signature__ = inspect.Signature(_PARAMETERS)  # type: ignore[attr-defined]
tune_command.__annotations__ = {p.name: p.annotation for p in _PARAMETERS}


#: Prefect's console handler (its logging.yml, overridden by environment): the level below which
#: it prints nothing. Logs still reach the Prefect API, whose UI shows them with the flow run.
_CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"


def prefect_console(verbose: bool) -> None:
    """Prefect's log lines (the flow's, its tasks', the temporary server's start and stop) on
    the terminal only with ``--verbose``: without it they would land in the middle of the bar.
    Set for Prefect's logging set-up (it reads the environment when first imported) and on the
    handlers it has already made, if it was imported before (``CliRunner``, another entry)."""
    if verbose:  # as Prefect's logging.yml has it: every line its loggers pass on
        os.environ.pop(_CONSOLE_LEVEL, None)
    else:
        os.environ[_CONSOLE_LEVEL] = "CRITICAL"
    for handler in _prefect_console_handlers():
        handler.setLevel(logging.NOTSET if verbose else logging.CRITICAL)


def _prefect_console_handlers() -> list[Any]:
    """The console handlers of Prefect's logging set-up ([] before Prefect is imported)."""
    if "prefect.logging.handlers" not in sys.modules:
        return []
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                      list(logging.root.manager.loggerDict))]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)]


@contextlib.contextmanager
def _logs_above_bar() -> Iterator[None]:
    """With ``--verbose``, Prefect's lines go above the live bar, not through it: its handlers
    write to ``sys.stderr`` as it is now (the bar's proxy) instead of the stream they kept."""
    handlers = _prefect_console_handlers()
    kept = [h.console.file for h in handlers]
    for handler in handlers:
        handler.console.file = sys.stderr
    try:
        yield
    finally:
        for handler, file in zip(handlers, kept, strict=True):
            handler.console.file = file

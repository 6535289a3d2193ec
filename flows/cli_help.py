"""How the ``knobflow`` commands explain themselves: ``--help`` in plain words.

Typer shows a parameter's Python type (``--rules <list[str]>``, ``target <str>``) and the usage
line in braces (``{target}``); every knobflow command uses ``PlainCommand`` instead, which names a
value as click always did (``TARGET``, ``--rules FILE``, ``--set-workload KEY=VALUE``,
``--budget INTEGER``). ``tune --help`` also lists its choices (the installed targets, the tuners,
the policies of the shipped rule sets), examples and the exit codes; they are looked up only when
the help is shown, so a command that is not asking for help pays nothing for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import typer
from typer.core import TyperCommand

__all__ = ["EXIT_CODES", "HOME_OPTION", "UNUSED_HOME_OPTION", "PlainCommand", "TuneCommand",
           "metavar_of", "shipped_policies"]

#: What the exit code of a command means (``knobflow validate`` adds 3: a rule blocks the config).
EXIT_CODES = [
    ("0", "done"),
    ("1", "failed: no usable result (no trial completed, no config found and verified), a "
          "regression (check-regression, tune --fail-on-regression), or knobflow itself "
          "crashed"),
    ("2", "bad input: one line on stderr names the file or option, what is wrong and the fix; "
          "nothing is stored"),
    ("130", "interrupted (Ctrl-C, SIGTERM); finished trials are kept, continue with --resume"),
]

EXAMPLES = [
    ("Twenty trials of SQLite's knobs:", "knobflow tune sqlite --budget 20"),
    ("A RocksDB instance under a read-heavy workload, for ten minutes at most:",
     "knobflow tune rocksdb --instance kv-1 --set-workload read_ratio=0.9 --time-budget 600"),
    ("Two knobs only, never giving up durability:",
     "knobflow tune sqlite --knobs cache_size,synchronous --policy durability"),
    ("Continue the last unfinished job, up to 40 trials in all:",
     "knobflow tune sqlite --resume --budget 40"),
]

#: The --home option every command takes.
HOME_OPTION = typer.Option(
    metavar="DIR", help="State directory (default: $KNOBFLOW_HOME, else ./.knobflow).")
#: --home of a command that reads no state (every command takes --home, so a script or an alias
#: can give it to all of them).
UNUSED_HOME_OPTION = typer.Option(
    "--home", metavar="DIR", help="State directory; this command reads none (accepted as by "
    "every command).")

_SCALARS = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN", Path: "PATH"}


def metavar_of(param: Any) -> str:
    """How the help names the value of ``param``: its declared metavar, else its name (an
    argument) or its type (an option), as click does: ``TARGET``, ``INTEGER``, ``TEXT``."""
    if param.metavar:
        return str(param.metavar)
    if param.param_type_name == "argument":
        return str(param.name).upper()
    annotation = param.type_descriptor.annotation
    while get_args(annotation):  # list[str] -> str, X | None -> X
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return _SCALARS.get(annotation, "VALUE")


class PlainCommand(TyperCommand):
    """A command whose help names values in words (``TARGET``, ``FILE``), not Python types."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and not param.hidden:
                name = metavar_of(param) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            name, help_text = record
            shown = param.display_type_rich(ctx)
            if shown and name.endswith(" " + shown):  # "--budget <int>" -> "--budget INTEGER"
                name = name[: -len(shown) - 1]
                if param.param_type_name == "argument":
                    name = metavar_of(param)
                else:
                    name = f"{name} {metavar_of(param)}"
            (args if param.param_type_name == "argument" else opts).append((name, help_text))
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class TuneCommand(PlainCommand):
    """``knobflow tune``: its help ends with the choices, examples and exit codes."""

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        from targets.registry import available_targets
        from tuners.samplers import TUNERS

        policies = shipped_policies()
        choices = [
            ("TARGET", ", ".join(available_targets()) + " (knobflow targets describes them, "
                       "knobflow knobs TARGET lists a target's knobs)"),
            ("--tuner", ", ".join(TUNERS)),
            ("--policy", "; ".join(f"{p} ({', '.join(targets)})"
                                   for p, targets in sorted(policies.items()))
             + "; and the policies your --rules files define"),
            ("--objective", "a metric of the target (knobflow targets lists them)"),
        ]
        with formatter.section("Choices"):
            formatter.write_dl(choices)
        with formatter.section("Examples"):
            for what, command in EXAMPLES:  # a command is never wrapped: it is copied as is
                formatter.write_text(what)
                formatter.write(f"{'':{formatter.current_indent + 2}}{command}\n")
        with formatter.section("Exit codes"):
            formatter.write_dl(EXIT_CODES)


def shipped_policies() -> dict[str, list[str]]:
    """The policies the shipped rule sets define, each with the targets it applies to (read
    from ``rules/sets/*.yaml`` as plain YAML: the rule engine costs a second to import)."""
    import yaml

    import rules

    found: dict[str, list[str]] = {}
    for path in sorted((Path(rules.__file__).parent / "sets").glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):  # a broken set is reported where it is used
            continue
        listed = doc.get("rules") if isinstance(doc, dict) else None
        for rule in listed if isinstance(listed, list) else []:
            if isinstance(rule, dict) and isinstance(rule.get("policy"), str):
                targets = found.setdefault(rule["policy"], [])
                if path.stem not in targets:
                    targets.append(path.stem)
    return found

"""The ``knobflow rules`` commands and ``knobflow validate``: lint rule files, review learned
rules, and check a config before it is applied (exit 0 passes, 3 blocked, 2 bad input).

The files named here are read bounded before they are parsed: a rule file to lint by
``KNOBFLOW_MAX_RULE_FILE_BYTES`` (as ``rules.parse`` bounds it), a config by
``KNOBFLOW_MAX_CONFIG_FILE_BYTES``; never a FIFO, and ``/dev/zero`` no further than the limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION, UNUSED_HOME_OPTION, PlainCommand

if TYPE_CHECKING:
    from targets.spec import KnobSpec

rules_app = typer.Typer(help="Lint rule files and review the rules learned from failures.",
                        no_args_is_help=True)
out = Console()
BLOCKED_EXIT = 3
SERVICE_HELP = "Service whose learned rules to use (default: the target's name)."


@rules_app.command("check", cls=PlainCommand)
def rules_check(
    file: Annotated[str, typer.Argument(help="Rule file (YAML) to lint.")],
    target: Annotated[
        str | None, typer.Option(help="Target whose knobs the rules use (default: the file's).")
    ] = None,
    home: Annotated[str | None, UNUSED_HOME_OPTION] = None,
) -> None:
    """Lint a rule file: every error names the file, line, column and rule, with a fix."""
    from rules.parse import parse_rules
    from targets.common.files import display_path
    from targets.registry import load_target

    text = _read_rule_file(file)
    shown = display_path(file)
    if target is None:
        target = _named_target(text, shown)
    target_cls = load_target(target)
    rules = parse_rules(text, shown, target_cls.knob_spec(), target_cls,
                        dict(target_cls.workload_defaults))
    kinds = ", ".join(f"{sum(r.kind == k for r in rules)} {k}" for k in ("constraint", "forbid",
                                                                          "trigger"))
    out.print(f"{file}: {len(rules)} rules for target '{target}' are valid ({kinds})",
              markup=False, highlight=False, soft_wrap=True)  # one line, the path whole


def _read_rule_file(file: str) -> str:
    """The rule file's text, bounded as ``rules.parse`` bounds it (``KNOBFLOW_MAX_RULE_FILE_BYTES``,
    checked before reading; never a device or FIFO)."""
    from rules.language import RuleError
    from rules.parse import BYTES_VARIABLE, MAX_RULE_FILE_BYTES
    from targets.common.files import UserFile, read_user_file

    kind = UserFile("rule file", BYTES_VARIABLE, MAX_RULE_FILE_BYTES, "split it into several files")
    return read_user_file(file, kind, RuleError)


def _named_target(text: str, shown: str) -> str:
    """The target a rule file names (``target:``). A plain top-level ``target: name`` line is
    taken as it is (parsing the rules checks it is the file's: the file is read once); anything
    else is parsed, and a YAML error reported as such."""
    import re

    import yaml

    from rules.language import RuleError
    from targets.common.yamlfiles import UniqueKeyLoader, yaml_problem

    plain = re.search(r"^target:[ \t]*(['\"]?)([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\1[ \t]*(#.*)?$",
                      text, flags=re.MULTILINE)
    if plain:
        return plain.group(2)
    loader = None
    try:
        loader = UniqueKeyLoader(text)
        head = loader.get_data()
    except yaml.YAMLError as exc:
        raise RuleError(f"{shown}{yaml_problem(exc, text)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    target = head.get("target") if isinstance(head, dict) else None
    if not isinstance(target, str) or not target.strip():
        raise RuleError(f"{shown}: the file names no 'target:'; add 'target: <name>' or pass "
                        "--target")
    if len(target) > 64:
        raise RuleError(f"{shown}: field 'target' is not a target's name; name one, e.g. "
                        "'target: sqlite', or pass --target")
    return target


@rules_app.command("list", cls=PlainCommand)
def rules_list(
    target: Annotated[str, typer.Argument(help="Target whose rules to list.")],
    home: Annotated[str | None, HOME_OPTION] = None,
    shipped: Annotated[bool, typer.Option(help="Also list the rules knobflow ships.")] = False,
    service: Annotated[str | None, typer.Option(help=SERVICE_HELP)] = None,
) -> None:
    """List the rules learned from failures (and, with --shipped, the shipped ones)."""
    from rules.learn import LearnedRules
    from rules.ruleset import RuleSet
    from targets.common.settings import knobflow_home
    from targets.registry import load_target

    target_cls = load_target(target)
    store = LearnedRules.of(knobflow_home(home), service or target,
                         target_cls.knob_spec())
    table = Table(title=f"rules of {target}")
    for col in ("id", "status", "kind", "rule", "why"):
        table.add_column(col, overflow="fold")
    if shipped:
        for rule in RuleSet.for_target(target_cls, all_policies=True).rules:
            status = f"shipped{', policy ' + rule.policy if rule.policy else ''}"
            table.add_row(rule.id, status, f"{rule.kind} ({rule.severity})",
                          rule.expression.text, rule.message)
    docs = store.documents()
    for doc in docs:
        where = doc.get("provenance", {})
        why = (f"actuation {where.get('actuation')} on {where.get('instance')} rolled back: "
               f"{where.get('reason')} at {where.get('time')}" if "actuation" in where else
               f"trial {where.get('trial')} of {where.get('study')}: "
               f"{where.get('failure_class')} at {where.get('time')}")
        table.add_row(doc["id"], doc.get("status", "proposed"), doc["kind"],
                      doc.get("when") or doc.get("expr", ""), why)
    out.print(table)
    if not docs:
        out.print(f"no learned rules for {target} yet ({store.path})", markup=False,
                  highlight=False, soft_wrap=True)


def _set_status(target: str, rule_id: str, status: str, home: str | None,
                service: str | None) -> None:
    from rules.learn import LearnedRules
    from targets.common.settings import knobflow_home
    from targets.registry import load_target

    store = LearnedRules.of(knobflow_home(home), service or target,
                         load_target(target).knob_spec())
    doc = store.set_status(rule_id, status)
    out.print(f"{rule_id}: {status} ({doc.get('when')})", markup=False, highlight=False,
              soft_wrap=True)


@rules_app.command("accept", cls=PlainCommand)
def rules_accept(
    target: Annotated[str, typer.Argument(help="Target of the rule.")],
    rule_id: Annotated[str, typer.Argument(help="Id of the learned rule.")],
    home: Annotated[str | None, HOME_OPTION] = None,
    service: Annotated[str | None, typer.Option(help=SERVICE_HELP)] = None,
) -> None:
    """Accept a learned rule: it keeps applying, now as reviewed."""
    _set_status(target, rule_id, "accepted", home, service)


@rules_app.command("drop", cls=PlainCommand)
def rules_drop(
    target: Annotated[str, typer.Argument(help="Target of the rule.")],
    rule_id: Annotated[str, typer.Argument(help="Id of the learned rule.")],
    home: Annotated[str | None, HOME_OPTION] = None,
    service: Annotated[str | None, typer.Option(help=SERVICE_HELP)] = None,
) -> None:
    """Drop a learned rule: later jobs no longer apply it (it stays listed, as dropped)."""
    _set_status(target, rule_id, "dropped", home, service)


def validate_command(
    target: Annotated[str, typer.Argument(help="Target the config is for.")],
    config: Annotated[str, typer.Argument(help="Config YAML (knob: value), e.g. a best.yaml.")],
    rules: Annotated[
        list[str] | None, typer.Option("--rules", help="Rule file of your own (repeatable).")
    ] = None,
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="Turn on a rule policy (repeatable).")
    ] = None,
    home: Annotated[str | None, HOME_OPTION] = None,
    service: Annotated[str | None, typer.Option(help=SERVICE_HELP)] = None,
) -> None:
    """Check a config against the rules: exit 0 if it passes, 3 if a rule blocks it."""
    from rules.learn import LearnedRules
    from rules.ruleset import RuleSet
    from targets.common.errors import fmt_value
    from targets.common.files import display_path
    from targets.common.settings import knobflow_home
    from targets.registry import load_target

    target_cls = load_target(target)
    spec = target_cls.knob_spec()
    values = _read_config(config, spec)
    learned = LearnedRules.of(knobflow_home(home), service or target, spec).rules()
    ruleset = RuleSet.for_target(target_cls, rules or [], policy or [], learned)
    verdict = ruleset.check(values)
    if verdict.failures:
        table = Table(title=f"rules {display_path(config)} fails")
        for col in ("rule", "severity", "why", "values"):
            table.add_column(col, overflow="fold")
        for f in verdict.failures:
            table.add_row(f.rule, f.severity, f.message,
                          ", ".join(f"{k}={v}" for k, v in f.values.items()))
        out.print(table)
    for name, broken in RuleSet.given_up(target_cls, values, rules or [], policy or []).items():
        out.print(f"warning: {display_path(config)} gives up {name}: " + "; ".join(
            f"{', '.join(f'{k}={fmt_value(v)}' for k, v in f.values.items())} (rule {f.rule}: "
            f"{f.message})" for f in broken) + f". Add --policy {name} to hold it to that policy",
            markup=False, highlight=False, soft_wrap=True)  # one line, the path whole: greppable
    verdict_text = "BLOCKED" if verdict.blocked else "passes"
    out.print(f"{display_path(config)}: {verdict_text} ({len(verdict.errors)} errors, "
              f"{len(verdict.warnings)} warnings, {len(ruleset.config_rules)} rules checked)",
              markup=False, highlight=False, soft_wrap=True)
    if verdict.blocked:
        raise typer.Exit(BLOCKED_EXIT)


def _read_config(config: str, spec: KnobSpec) -> dict[str, Any]:
    """A config file (knob: value), bounded (``KNOBFLOW_MAX_CONFIG_FILE_BYTES``) and checked
    against the spec knob by knob, each error with its line."""
    from collections.abc import Mapping

    from targets.common.errors import ConfigError
    from targets.common.files import CONFIG_FILE
    from targets.common.yamlfiles import read_yaml

    doc = read_yaml(config, CONFIG_FILE, ConfigError, empty=(
        "a config is a mapping of knob to value, e.g. a job's best.yaml"))
    if not isinstance(doc.data, Mapping):
        raise ConfigError(f"{doc.at()}: a config is a mapping of knob to value")
    values: dict[str, Any] = {}
    for name, value in doc.data.items():
        values.update(spec.validate_config({name: value}, doc.at(name)))
    return values

"""``knobflow service show | set``: the settings of a service (``tasks.services``), which hold for
every instance of it (``approval: required`` makes ``knobflow apply`` wait for an operator).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION, PlainCommand
from flows.cli_instance import _root

__all__ = ["service_app"]

service_app = typer.Typer(help="Services: the settings every instance of a service shares.",
                          no_args_is_help=True, rich_markup_mode=None)
_out = Console()
_SERVICE = typer.Argument(help="Service name (as given to instance add/start --service).")


@service_app.command("show", cls=PlainCommand)
def service_show(
    service: Annotated[str, _SERVICE],
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as JSON.")] = False,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Show a service's settings (a setting never set shows its default) and its instances."""
    from targets.common.files import display_path
    from tasks.instances import InstanceStore
    from tasks.services import ALLOWED, ServiceSettings, service_settings, settings_path

    root = _root(home)
    settings = service_settings(root, service)
    instances = [i.name for i in InstanceStore(root).of_service(service)]
    if as_json:
        print(json.dumps({"service": service, "settings": settings.to_dict(),
                          "instances": instances}))
        return
    table = Table(title=f"service {service} ({display_path(settings_path(root, service))})")
    for column in ("setting", "value", "default", "allowed"):
        table.add_column(column, overflow="fold")
    for name, field in ServiceSettings.model_fields.items():
        table.add_row(name, str(getattr(settings, name)), str(field.default), ALLOWED[name])
    _out.print(table)
    _out.print(f"instances: {', '.join(instances) or 'none yet'}", markup=False)


@service_app.command("set", cls=PlainCommand)
def service_set(
    service: Annotated[str, _SERVICE],
    assignments: Annotated[list[str], typer.Argument(
        metavar="KEY=VALUE...", help="approval=required|none, approval_timeout_s=SECONDS, "
        "priority=production|default.")],
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Change settings of a service (the others are kept), e.g. approval=required."""
    from targets.common.errors import KnobflowError
    from tasks.services import parse_setting, set_service_settings

    changes = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise KnobflowError(f"service set {item!r}: expected KEY=VALUE, e.g. "
                                "approval=required")
        changes[key.strip()] = parse_setting(key.strip(), text.strip())
    settings = set_service_settings(_root(home), service, changes)
    _out.print(f"service {service}: " + " ".join(f"{k}={v}" for k, v in
                                                  settings.to_dict().items()), markup=False)

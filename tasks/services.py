"""Per-service settings: how knobflow treats every instance of a service, kept in the home.

``HOME/services/<service>/settings.yaml`` holds the settings a user changed (``knobflow service
set S KEY=VALUE``); a missing file or key means the default. ``ServiceSettings`` is the typed
model (pydantic) of every setting, so a new one is one field with its default and its rule:

==================  ========  =================================================================
approval            none      ``required``: ``knobflow apply`` pauses before it changes an
                              instance of the service until an operator approves or rejects
approval_timeout_s  86400     seconds a paused apply waits for the answer; none: rejected
priority            default   ``production``: the service's tune jobs submitted through the work
                              pool go to its ``production`` queue (priority 1), before those of
                              ``default`` services (queue ``default``, priority 10)
==================  ========  =================================================================

The file is written atomically under a lock (two ``service set`` at once keep each other's
keys); a bad file is a ``KnobflowError`` naming the file, the field and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from targets.common.errors import KnobflowError, check_fields
from targets.common.files import display_path, file_lock, write_text_atomic

__all__ = [
    "SERVICE_NAME", "ServiceSettings", "check_service", "parse_setting", "service_settings",
    "set_service_settings", "settings_path",
]

#: A service name: what ``tune --service`` and ``instance add --service`` accept, safe as a path.
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ServiceSettings(BaseModel):
    """The settings of one service (defaults: what a service without a settings file gets)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    approval: Literal["required", "none"] = Field(
        "none", description="required: apply pauses for an operator's approval before it "
        "changes an instance of the service; none: it does not")
    approval_timeout_s: int = Field(
        86400, ge=1, le=30 * 86400, description="seconds a paused apply waits for an answer "
        "before the change is rejected")
    priority: Literal["production", "default"] = Field(
        "default", description="production: the service's tune jobs submitted through the work "
        "pool go to its production queue (priority 1), ahead of default services' (queue "
        "default, priority 10)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


#: What each setting may be, in words (for errors and ``service show``).
ALLOWED: dict[str, str] = {
    "approval": "required or none",
    "approval_timeout_s": "an integer number of seconds from 1 to 2592000 (30 days)",
    "priority": "production or default",
}
FIELDS = tuple(ServiceSettings.model_fields)


def check_service(service: str) -> str:
    """``service`` if it is a valid service name; a KnobflowError stating the rule otherwise."""
    if not isinstance(service, str) or not SERVICE_NAME.match(service):
        raise KnobflowError(f"bad service name {service!r}: 1-64 letters, digits, '.', '_' or "
                            "'-', starting with a letter or digit")
    return service


def settings_path(home: str | Path, service: str) -> Path:
    """Where ``service``'s settings are kept."""
    return Path(home) / "services" / check_service(service) / "settings.yaml"


def _validated(values: Mapping[str, Any], where: str, fix: str) -> ServiceSettings:
    try:
        check_fields(values, FIELDS, where, KnobflowError, "setting")
    except KnobflowError as exc:
        raise KnobflowError(f"{exc}; {fix}") from None
    try:
        return ServiceSettings.model_validate(dict(values))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        raise KnobflowError(f"{where}: setting '{name}' is {error.get('input')!r}, it must be "
                            f"{ALLOWED.get(name, error['msg'])}; {fix}") from None


def _read(path: Path, service: str) -> dict[str, Any]:
    """The settings the file sets ({} without a file)."""
    if not path.exists():
        return {}
    shown = display_path(path)
    fix = f"correct the file or set the value again (`knobflow service set {service} KEY=VALUE`)"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KnobflowError(f"{shown}: not a readable YAML file ({first}); {fix}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise KnobflowError(f"{shown}: settings are a mapping of setting: value "
                            f"(e.g. 'approval: required'); {fix}")
    _validated(data, shown, fix)
    return dict(data)


def service_settings(home: str | Path, service: str) -> ServiceSettings:
    """The settings of ``service`` (the defaults when it has no settings file)."""
    path = settings_path(home, service)
    return ServiceSettings.model_validate(_read(path, service))


def parse_setting(key: str, text: str) -> Any:
    """The value of ``KEY=VALUE`` as given on the command line, typed for the setting ``key``."""
    check_fields({key: text}, FIELDS, "service set", KnobflowError, "setting")
    if ServiceSettings.model_fields[key].annotation is int:
        try:
            return int(text)
        except ValueError:
            raise KnobflowError(f"service set: setting '{key}' is {text!r}, it must be "
                                f"{ALLOWED[key]}") from None
    return text


def set_service_settings(home: str | Path, service: str,
                         changes: Mapping[str, Any]) -> ServiceSettings:
    """Change some of ``service``'s settings (the others are kept); the settings now."""
    path = settings_path(home, service)
    fix = f"see `knobflow service show {service}`"
    _validated(changes, "service set", fix)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(path.with_name(".settings.lock")):
        values = {**_read(path, service), **changes}
        settings = _validated(values, "service set", fix)
        header = (f"# knobflow settings of service {service}; change them with "
                  f"`knobflow service set {service} KEY=VALUE`\n")
        write_text_atomic(path, header + yaml.safe_dump(values, sort_keys=True))
    return settings

"""The settings object of knobflow (pydantic-settings): where every store is.

``Settings`` reads ``KNOBFLOW_*`` variables, then the TOML file named by ``KNOBFLOW_CONFIG`` (what
``infra/stack start`` writes), the variables first. ``None`` is the embedded default of a store;
a URL points it at a shared stack. The stack's secret stays in its 0600 file: ``read_secret``
checks the file, ``database_url`` puts the password into a URL for this process only, and
``redacted`` is what may be shown. Imported lazily (pydantic-settings costs ~0.3 s): the
``knobflow`` command's start does not pay for it unless a stack is configured.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from targets.common.errors import KnobflowError

__all__ = ["CONFIG_ENV", "STACK_USER", "Settings", "current_settings", "database_url",
           "read_secret", "redacted"]

from targets.common.settings import CONFIG_ENV, STACK_USER


class Settings(BaseSettings):
    """Where every store of knobflow is: the embedded default (``None``) or a shared stack."""

    model_config = SettingsConfigDict(env_prefix="KNOBFLOW_", extra="forbid")

    home: Path = Field(default=Path(".knobflow"), description=(
        "The state directory: job records, instance data, and every embedded store."))
    optuna_storage: str | None = Field(default=None, description=(
        "Optuna studies: None is the home's journal; an SQLAlchemy URL without password "
        "(postgresql+psycopg2://knobflow@HOST:PORT/DB) is a shared RDB storage."))
    tracking_uri: str | None = Field(default=None, description=(
        "MLflow: None is $MLFLOW_TRACKING_URI, else sqlite in the home; or a tracking server."))
    prefect_api_url: str | None = Field(default=None, description=(
        "Prefect: None is $PREFECT_API_URL, else a temporary server per command."))
    records_url: str | None = Field(default=None, description=(
        "knobflow's own records (trial tables, learned rules): None is files in the home; "
        "a PostgreSQL URL without password is shared by every host."))
    secret_file: Path | None = Field(default=None, description=(
        "The stack's secret (0600, one line): the password of user knobflow everywhere."))
    work_pool: str = Field(default="knobflow", description=(
        "The Prefect work pool whose workers run trials of jobs fanned out (--workers)."))

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments first, then ``KNOBFLOW_*`` variables, then the ``KNOBFLOW_CONFIG`` file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_ENV)
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)

    @property
    def shared(self) -> bool:
        """Whether any store is a shared one (a stack), not the embedded default."""
        return bool(self.optuna_storage or self.records_url or self.tracking_uri
                    or self.prefect_api_url)

    def mlflow_uri(self, home: Path | None = None) -> str:
        """The MLflow tracking URI: the setting, ``$MLFLOW_TRACKING_URI``, or the home's store."""
        root = home or Path(os.environ.get("KNOBFLOW_HOME") or self.home).resolve()
        return (self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{root / 'mlflow.db'}")

    def api_url(self) -> str | None:
        """The Prefect API: the setting or ``$PREFECT_API_URL``; None is a temporary server."""
        return self.prefect_api_url or os.environ.get("PREFECT_API_URL") or None


def _config_error(exc: ValidationError) -> Exception:
    where = os.environ.get(CONFIG_ENV)
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "?"
    source = (f"{where} (from {CONFIG_ENV}) or KNOBFLOW_{field.upper()}" if where
              else f"KNOBFLOW_{field.upper()}")
    fix = ("remove it (known settings: " + ", ".join(Settings.model_fields) + ")"
           if first.get("type") == "extra_forbidden" else "correct it")
    return KnobflowError(f"{source}: setting {field!r}: {first.get('msg')}; {fix}")


def current_settings(home: str | os.PathLike[str] | None = None) -> Settings:
    """The settings in force (a ``KnobflowError`` names the file or variable and the field)."""
    path = os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise KnobflowError(f"{CONFIG_ENV}={path}: no such file; point it at the knobflow.toml "
                            "that `infra/stack start` wrote, or unset it for the embedded stores")
    try:
        settings = Settings() if home is None else Settings(home=Path(home))
    except ValidationError as exc:
        raise _config_error(exc) from None
    except (OSError, ValueError) as exc:  # a TOML file that does not parse
        raise KnobflowError(f"{path}: not a TOML settings file ({exc}); fix its syntax "
                            "(key = \"value\" lines)") from None
    return settings


def read_secret(settings: Settings) -> str | None:
    """The stack's secret from its file (which must be private), or None without one."""
    if settings.secret_file is None:
        return None
    path = settings.secret_file.expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KnobflowError(f"secret_file {path}: {exc.strerror}; point secret_file at the "
                            "stack's secret (infra/stack start writes DIR/secret)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KnobflowError(f"secret_file {path}: readable by others (mode {mode & 0o777:o}); "
                            f"run chmod 600 {path}")
    if not text:
        raise KnobflowError(f"secret_file {path}: empty; copy the stack's secret into it")
    return text


def database_url(url: str, settings: Settings | None = None) -> str:
    """``url`` with the stack's password put in (SQLAlchemy, Optuna): for this process only,
    never printed or logged (``redacted`` is what may be shown)."""
    from sqlalchemy.engine import make_url

    secret = read_secret(settings or current_settings())
    parsed = make_url(url)
    if secret is None or parsed.password:
        return url
    return parsed.set(password=secret).render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` as it may be shown: any password replaced by ``***``."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    creds, tail = rest.split("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{tail}"

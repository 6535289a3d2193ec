"""Finding targets by name through the ``knobflow.targets`` entry-point group.

A user's package adds a target by declaring, in its own ``pyproject.toml``::

    [project.entry-points."knobflow.targets"]
    mydb = "mypackage.target:MyDbTarget"
"""

from __future__ import annotations

import functools
from importlib import import_module

from targets.base import Target
from targets.common.errors import TargetNotFoundError, did_you_mean

GROUP = "knobflow.targets"


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points  # slow to import; trial processes never need it

    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def available_targets() -> list[str]:
    """Names of every registered target, sorted."""
    return sorted(_entry_points())


def target_ref(name: str) -> str:
    """The ``module:Class`` reference of a target (what a trial process imports)."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none (is knobflow installed? pip install -e .)"
        raise TargetNotFoundError(
            f"unknown target '{name}'{did_you_mean(name, eps)}; known targets: {known}"
        )
    return eps[name]


def import_target(ref: str) -> type[Target]:
    """Import a target class from its ``module:Class`` reference."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: object = import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise TargetNotFoundError(
            f"entry point '{ref}' cannot be imported ({type(exc).__name__}: {exc}); "
            "reinstall the package that provides it"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, Target)):
        raise TargetNotFoundError(f"entry point '{ref}' is not a subclass of targets.base.Target")
    return obj


def load_target(name: str) -> type[Target]:
    """The target class registered as ``name``."""
    return import_target(target_ref(name))

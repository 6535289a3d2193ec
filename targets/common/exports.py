"""What a package offers, imported when first used: ``lazy_exports`` for ``__init__.py`` files.

A package's ``__init__`` names its public surface in ``__all__`` without importing it: the trial
process imports ``tasks.trial_process`` and the CLI starts in a fraction of a second, so neither
may pay for Prefect, MLflow or pandas through a package's front (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` and a module ``__getattr__`` for ``package``: ``exports`` maps a submodule
    (``"runner"``) to the names it offers; each is imported on first use."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later lookups do not come here
        return value

    return sorted(where), __getattr__

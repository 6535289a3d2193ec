"""What logging a model with MLflow's scikit-learn flavor in skops format needs besides the model,
made cheap: the pinned ``pip_requirements``, the types skops must be told to trust, and the
imports (``import_now``).

The types a fitted model holds beyond skops' safe set depend on its estimators' classes and the
library versions, not on its data (a random forest holds ``sklearn.tree._tree.Tree`` whatever it
was fitted on). Finding them means serialising the model once more (0.5 s for a 100-tree forest),
so they are found once per model structure and versions and kept, in this process and in the
user's cache folder (``~/.cache/knobflow/skops-trusted-types.json``; ``KNOBFLOW_TYPES_CACHE=0``
turns the file off). A kept list is still checked where it counts: MLflow loads every skops model
it saves with the trusted types it is given, and ``log_model_run`` finds them again and retries
when a kept list falls short.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sklearn.base import BaseEstimator

from targets.common.files import user_cache_dir

__all__ = ["REQUIREMENTS", "import_now", "pip_requirements", "trusted_types"]

log = logging.getLogger("knobflow.train")

#: Packages a logged model needs; pinned to what trained it (MLflow does not infer them).
REQUIREMENTS = ("scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "skops")
#: Classes the skops serializer may load beyond its built-in safe set.
_TRUSTED_PREFIXES = ("sklearn.", "lightgbm.", "numpy.", "collections.OrderedDict", "builtins.")
#: Versions the types a model holds depend on (part of every kept list's key).
_TYPE_VERSIONS = ("scikit-learn", "lightgbm", "numpy", "scipy", "skops")

_kept: dict[str, list[str]] = {}
_lock = threading.Lock()


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def pip_requirements() -> list[str]:
    """Exact pins of what the logged model needs to load, from the installed versions."""
    return [f"{dist}=={v}" if (v := _version(dist)) else dist for dist in REQUIREMENTS]


def import_now() -> None:
    """Load now what a training step loads on first use, rather than in the step (the command
    does it while Prefect's temporary server starts: the two then overlap): skops (its import
    lists every scikit-learn estimator), matplotlib (the importance plots; the job's report
    draws with it after) and MLflow's map of installed packages to modules (it reads every
    installed distribution's file list once per process, to check the pinned requirements
    against the environment). Whatever fails here is left to the training step, which reports
    it without failing the job."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401  (what savefig draws a PNG with)
        import skops.io  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches(pip_requirements())
    except Exception as exc:  # an optimisation only: the step loads what it needs itself
        log.debug("the training step's imports were not loaded ahead: %s", exc)


def _structure(model: BaseEstimator) -> list[str]:
    """The classes of the estimators in ``model`` (fitted sub-estimators included), sorted."""
    found: set[str] = set()
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 12:
            return
        seen.add(id(obj))
        if isinstance(obj, BaseEstimator):
            found.add(f"{type(obj).__module__}.{type(obj).__qualname__}")
            for value in vars(obj).values():
                walk(value, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for item in obj[:3] if _same_types(obj) else obj:  # a forest: 100 alike trees
                walk(item, depth + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item, depth + 1)

    walk(model, 0)
    return sorted(found)


def _same_types(items: list[Any] | tuple[Any, ...]) -> bool:
    return len({type(item) for item in items}) <= 1


def _key(model: BaseEstimator) -> str:
    text = json.dumps([_structure(model), [_version(d) for d in _TYPE_VERSIONS]])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cache_file() -> Path | None:
    if os.environ.get("KNOBFLOW_TYPES_CACHE", "1") == "0":
        return None
    return user_cache_dir() / "skops-trusted-types.json"


def _read_cache(path: Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    try:
        kept = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(kept, dict):
        return {}
    return {k: v for k, v in kept.items()
            if isinstance(v, list) and all(isinstance(t, str) for t in v)}


def _write_cache(path: Path | None, kept: dict[str, list[str]]) -> None:
    """Keep ``kept`` in ``path`` (whole or not at all); a cache that cannot be written only
    costs the next process one serialisation per model structure."""
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        part.write_text(json.dumps(kept, indent=1, sort_keys=True), "utf-8")
        os.replace(part, path)
    except OSError as exc:
        log.debug("the trusted types were not kept: %s", exc)


def _found_types(model: BaseEstimator) -> list[str]:
    """The types skops finds in ``model`` beyond its safe set, by serialising it."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def _checked(types: list[str]) -> list[str]:
    bad = [t for t in types if not t.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise TypeError(f"the model holds types a loader should not trust: {bad}")
    return types


def trusted_types(model: BaseEstimator, *, fresh: bool = False) -> list[str]:
    """The classes skops must be told to trust to load ``model``: only sklearn, LightGBM, numpy
    and builtins (a ``TypeError`` otherwise). Kept per model structure and library versions;
    ``fresh`` finds them again from the model and keeps what it finds."""
    key = _key(model)
    path = _cache_file()
    with _lock:
        if not fresh:
            if key not in _kept:
                _kept.update(_read_cache(path))
            if key in _kept:
                return _checked(list(_kept[key]))
    types = _checked(_found_types(model))
    with _lock:
        kept = {**_read_cache(path), key: types}
        _kept.update(kept)
        _write_cache(path, kept)
    return list(types)


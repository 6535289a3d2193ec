"""Reading the files users write, and writing knobflow's own files safely.

* YAML (specs, search spaces, workloads, rule files): PyYAML silently keeps the last of two equal
  keys; ``UniqueKeyLoader`` makes a duplicate key an error with its line, because in a knob spec it
  almost always hides a typo. ``load_yaml`` names the file, line and column of any mistake.
* Atomic writes (``atomic_path``, ``write_text_atomic``): a crash never leaves half a file behind.
* File locks (``file_lock``): processes sharing a home take turns (``filelock``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from targets.common.errors import KnobflowError

__all__ = [
    "UniqueKeyLoader",
    "atomic_path",
    "display_path",
    "file_lock",
    "load_yaml",
    "write_text_atomic",
    "yaml_problem",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in seen
        except TypeError:  # construct_mapping reports the unhashable key with its line
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key '{key}' (first at line {seen[key]}); keep one of them",
                key_node.start_mark,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as a user reads it: relative to the working directory or the repo if possible."""
    p = Path(path).resolve()
    for base in (Path.cwd(), _REPO_ROOT):
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return str(p)


def load_yaml(path: str | os.PathLike[str], error: type[KnobflowError] = KnobflowError) -> Any:
    """Parse a YAML file; a missing file or a syntax error raises ``error`` naming file and line."""
    shown = display_path(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{shown}: file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise error(f"{shown}: cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise error(f"{shown}{yaml_problem(exc, text)}") from None


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """A YAML error as ``:line:col: invalid YAML: problem``, to follow a file's name."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        return f"{where}: invalid YAML: {exc.problem or exc}"
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - text.rfind("\n", 0, exc.position)
        return (f":{line}:{col}: invalid YAML: unacceptable character "
                f"#x{exc.character:04x}: {exc.reason}")
    return f": invalid YAML: {exc}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends
    without an error, and is removed when it raises (``path`` is then untouched). Concurrent
    writers each get their own temporary file: the last to finish wins, whole."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block; waits
    for another holder (``timeout`` seconds, -1 = for ever)."""
    from filelock import FileLock  # 60 ms to import: only where a lock is taken

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield

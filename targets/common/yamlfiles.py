"""Reading the YAML files users write (specs, search spaces, workloads, rule files).

PyYAML silently keeps the last of two equal keys; ``UniqueKeyLoader`` makes a duplicate key an
error with its line, because in a knob spec it almost always hides a typo. ``load_yaml`` names the
file, line and column of any mistake.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from targets.common.errors import KnobflowError
from targets.common.files import display_path

__all__ = ["UniqueKeyLoader", "load_yaml", "yaml_problem"]


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

"""Reading the YAML files users write (specs, search spaces, workloads, configs, rule files).

PyYAML silently keeps the last of two equal keys; ``UniqueKeyLoader`` makes a duplicate key an
error with its line, because in a knob spec it almost always hides a typo. It also keeps a
hostile file from hurting: nesting deeper than ``MAX_DEPTH`` levels (PyYAML composes recursively:
it was a ``RecursionError``), aliases that expand a document beyond ``MAX_EXPANDED`` values or
into itself, tags (``!!python/object``: never code from a file), values a tag's constructor
cannot read (``2001-02-30``), and, for a kind of user file, values longer than its
``max_value_chars`` are errors with their line and column.

``read_yaml`` reads a user's file bounded (``files.read_user_file``) and keeps where each key is
(``YamlDocument.at``); ``load_yaml`` is its content only. Every mistake names the file, line and
column; ``yaml_problem`` words a YAML error that way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from targets.common.errors import KnobflowError
from targets.common.files import UserFile, display_path, excerpt, read_user_file

__all__ = [
    "MAX_DEPTH", "MAX_EXPANDED", "TooBig", "UniqueKeyLoader", "YamlDocument", "load_yaml",
    "parse_document", "read_yaml", "yaml_problem",
]

#: levels of nesting a document may have (a knob spec needs 4, a rule file 3)
MAX_DEPTH = 50
#: values aliases may add to a document (each use of an alias adds the values it stands for)
MAX_EXPANDED = 100_000
_YAML_TAG = "tag:yaml.org,2002:"


class TooBig(yaml.composer.ComposerError):
    """A document within YAML's grammar but beyond what a user's file may hold (nesting,
    aliases, a value's length): said without "invalid YAML"."""


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys, deep nesting, aliases that blow up or
    loop, tags it has no plain constructor for, and (with a ``kind``) overlong values."""

    def __init__(self, stream: str, kind: UserFile | None = None) -> None:
        super().__init__(stream)
        self.kind = kind
        self._depth = 0
        self._alias: yaml.Mark | None = None  # where the first alias is

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and self._alias is None:
            self._alias = event.start_mark
        if self._depth >= MAX_DEPTH:
            raise TooBig(
                None, None, f"the document nests deeper than {MAX_DEPTH} levels; flatten it",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor: str | None) -> yaml.ScalarNode:
        node = super().compose_scalar_node(anchor)
        kind = self.kind
        if kind is not None and len(node.value) > kind.max_value_chars:
            raise TooBig(
                None, None,
                f"a value of {len(node.value)} characters ({excerpt(node.value)}); a "
                f"{kind.what} holds values of at most {kind.max_value_chars} characters",
                node.start_mark,
            )
        return node

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if self._alias is not None:
            _check_expansion(node, self._alias)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError, AttributeError):
            if not isinstance(node, yaml.ScalarNode):
                raise
            raise yaml.constructor.ConstructorError(
                None, None,
                f"the value {excerpt(node.value)} is not a valid {_written_tag(node.tag)}; "
                "quote it to keep it as text",
                node.start_mark,
            ) from None


def _check_expansion(root: yaml.Node, alias: yaml.Mark) -> None:
    """Aliases may not make a document refer to itself, nest it deeper than ``MAX_DEPTH``
    levels, or add more than ``MAX_EXPANDED`` values to it (a "billion laughs": every walk over
    it would take for ever). Each node is counted once, without recursion: time linear in the
    file, whatever the aliases."""
    sizes: dict[int, tuple[int, int]] = {}  # node -> (values, levels) once done
    open_nodes: set[int] = set()  # the nodes on the path being walked
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key, children = id(node), _children(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = (1 + sum(sizes[id(c)][0] for c in children),
                          1 + max((sizes[id(c)][1] for c in children), default=0))
            if sizes[key][1] > MAX_DEPTH:
                raise TooBig(None, None, f"the document nests deeper than {MAX_DEPTH} levels "
                             "through its aliases; write the values out instead", alias)
        elif key in open_nodes:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a collection it is inside of; write the values "
                "out instead", alias)
        elif key not in sizes:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
    if sizes[id(root)][0] - len(sizes) > MAX_EXPANDED:
        raise TooBig(None, None, f"aliases expand the document by more than {MAX_EXPANDED} "
                     "values; write the values out instead", alias)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _construct_unique_mapping(
    loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in seen
        except TypeError:  # construct_mapping reports the unhashable key with its line
            continue
        if duplicate:
            shown = f"'{key}'" if len(str(key)) <= 40 else excerpt(key)
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {shown} (first at line {seen[key]}); keep one of them",
                key_node.start_mark,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


def _construct_undefined(loader: UniqueKeyLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None,
        f"the tag {excerpt(_written_tag(node.tag))} is not allowed; remove it (a file holds "
        "plain values: numbers, text, lists and mappings, never code)",
        node.start_mark,
    )


def _written_tag(tag: str) -> str:
    """A tag as it is written: ``!!python/object`` for ``tag:yaml.org,2002:python/object``,
    ``!!timestamp`` for the tag a plain ``2001-02-30`` resolves to."""
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)
UniqueKeyLoader.add_constructor(None, _construct_undefined)


@dataclass(frozen=True)
class YamlDocument:
    """A YAML file's content (``data``), its composed nodes and the file as users read it."""

    data: Any
    root: yaml.Node | None
    source: str

    def at(self, *keys: Any) -> str:
        """``file:line:col`` of the deepest of ``keys`` (mapping keys, list indexes, from the
        top) found in the document; the document's start if none is; ``file`` if it is empty."""
        node, mark = self.root, self.root.start_mark if self.root is not None else None
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if _same_key(k, key)), None)
                if found is None:
                    break
                mark, node = found[0].start_mark, found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and (
                0 <= key < len(node.value)
            ):
                node = node.value[key]
                mark = node.start_mark
            else:
                break
        return f"{self.source}:{mark.line + 1}:{mark.column + 1}" if mark else self.source


def _same_key(node: yaml.Node, key: Any) -> bool:
    if not isinstance(node, yaml.ScalarNode):
        return False
    return node.value == key if isinstance(key, str) else node.value.lower() == str(key).lower()


def read_yaml(
    path: str | os.PathLike[str],
    kind: UserFile,
    error: type[KnobflowError] = KnobflowError,
    empty: str | None = None,
) -> YamlDocument:
    """Read and parse a user's YAML file of ``kind``, bounded; a missing file, one too big or
    not regular, a syntax error or a hostile construct raises ``error`` naming file and line.
    With ``empty`` (the fix), a file without a document (empty, only comments) is an error too.
    """
    text = read_user_file(path, kind, error)
    shown = display_path(path)
    data, root = parse_document(text, shown, error, kind)
    if root is None and empty is not None:
        raise error(f"{shown}: the file holds no settings (it is empty or only comments); {empty}")
    return YamlDocument(data, root, shown)


def parse_document(text: str, shown: str, error: type[KnobflowError],
                   kind: UserFile | None = None) -> tuple[Any, yaml.Node | None]:
    """The data of one YAML document and its node tree (for positions), read with
    ``UniqueKeyLoader``; a mistake is an ``error`` naming ``shown``, line and column."""
    loader = None
    try:
        loader = UniqueKeyLoader(text, kind)  # (a control character is refused here)
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    except yaml.YAMLError as exc:
        raise error(f"{shown}{yaml_problem(exc, text)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(
    path: str | os.PathLike[str],
    error: type[KnobflowError],
    kind: UserFile,
    empty: str | None = None,
) -> Any:
    """The content of a user's YAML file of ``kind`` (see ``read_yaml``)."""
    return read_yaml(path, kind, error, empty).data


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """A YAML error as ``:line:col: invalid YAML: problem``, to follow a file's name (a long
    token the problem quotes is cut to a short excerpt)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        said = "" if isinstance(exc, TooBig) else "invalid YAML: "
        return f"{where}: {said}{_shortened(str(exc.problem or exc))}"
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - text.rfind("\n", 0, exc.position)
        return (f":{line}:{col}: invalid YAML: unacceptable character "
                f"#x{exc.character:04x}: {exc.reason}")
    return f": invalid YAML: {_shortened(str(exc))}"


def _shortened(problem: str) -> str:
    """PyYAML quotes tokens in its problems (an undefined alias, a tag): long ones are cut."""
    return re.sub(r"'([^'\n]{41,})'", lambda m: excerpt(m.group(1)), problem)

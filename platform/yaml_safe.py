"""Read a small YAML config file defensively: bounded size, depth and alias expansion.

Job files come from users and from other people's repositories, so reading one must not
cost more than a few hundred milliseconds and megabytes whatever it holds. PyYAML's
`safe_load` already refuses Python tags, but it accepts:

- duplicate keys (`steps: 60` ... `steps: 5`: the last one silently wins) -> refused, naming
  the key and both lines;
- aliases that expand exponentially (a "billion laughs": 1 KB of YAML, 9^9 leaves). PyYAML
  itself shares aliased nodes, but every consumer that walks the result as a tree (pydantic,
  an error message) pays the full expansion. Aliases stay allowed (anchors and `<<` merge
  keys are a normal way to share a block between sections), but the document's size *as
  a tree*, each alias counted as a copy of what it names, is bounded (`max_nodes`); a job
  has a few hundred nodes, so the default leaves ample room. A recursive alias is refused;
- deep nesting (`[[[[...`: a RecursionError traceback) -> refused at `max_depth`;
- huge files -> refused by size before reading; bytes that are not UTF-8 -> one line.

Every error is a `YamlFileError` whose message is one line: `file:line:col: problem. Fix: ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_MESSAGE_CHARS = 300
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """A YAML file that cannot be read; the message is one line with file, place and fix."""


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters (an error must never echo a huge value)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _where(path: Path, mark: yaml.Mark | None) -> str:
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


class _Refused(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark | None, message: str):
        super().__init__(message)
        self.mark, self.message = mark, message


class BoundedSafeLoader(yaml.SafeLoader):
    """SafeLoader with limits on depth and expanded size, and no duplicate keys."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise _Refused(self.peek_event().start_mark,
                               f"nested deeper than {self.max_depth} levels. Fix: flatten it; "
                               "a job file needs a handful of levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, self.max_nodes)
        return self.construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merged keys may be overridden; that is what `<<` is for
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(key_node.start_mark,
                                   f"duplicate key {one_line(repr(key), 80)} (first at line "
                                   f"{seen[key].line + 1}). Fix: keep only one of them")
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node, limit: int) -> None:
    """Refuse a document whose tree, aliases expanded, has more than `limit` nodes.

    Iterative (no recursion limit), memoised per node (shared nodes are sized once), so it
    costs O(distinct nodes) however large the expansion would be.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > limit:
                raise _Refused(root.start_mark,
                               f"aliases expand this document to more than {limit:,} nodes "
                               "(a job file has a few hundred). Fix: write the values out or "
                               "use fewer nested aliases")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused(node.start_mark, "an alias refers to the block it is inside "
                           "(recursive alias). Fix: remove the alias")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml_file(path: str | Path, *, max_bytes: int = MAX_BYTES) -> Any:
    """Parse a YAML file within the limits above; raise YamlFileError with a one-line message."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise YamlFileError(f"{path}: file is {size / 1024:,.0f} KiB, larger than the "
                            f"{max_bytes // 1024} KiB a job file may be. Fix: pass the job "
                            "file, not a data file")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)  # the file may have grown since stat
    if len(raw) > max_bytes:
        raise YamlFileError(f"{path}: file is larger than the {max_bytes // 1024} KiB a job "
                            "file may be. Fix: pass the job file, not a data file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlFileError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                            f"{err.start}). Fix: save the job file as UTF-8") from None
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as err:
        raise YamlFileError(f"{_where(path, err.mark)}: {err.message}") from None
    except yaml.constructor.ConstructorError as err:
        if "could not determine a constructor for the tag" in str(err.problem):
            tag = one_line(str(err.problem).rsplit(" ", 1)[-1], 80)
            raise YamlFileError(f"{_where(path, err.problem_mark)}: the tag {tag} is not allowed "
                                "in a job file. Fix: use plain mappings, lists, strings and "
                                "numbers") from None
        raise YamlFileError(f"{_where(path, err.problem_mark)}: {one_line(err.problem)}") from None
    except yaml.MarkedYAMLError as err:
        context = f"{err.context}: " if err.context else ""
        raise YamlFileError(f"{_where(path, err.problem_mark)}: not valid YAML: "
                            f"{one_line(context + str(err.problem))}") from None
    except yaml.YAMLError as err:
        raise YamlFileError(f"{path}: not valid YAML: {one_line(str(err))}") from None
    except RecursionError:  # belt and braces: the depth limit should stop this first
        raise YamlFileError(f"{path}: nested too deeply. Fix: flatten it") from None


def short_repr(value: Any, limit: int = 120) -> str:
    """repr of `value` cut to one line of `limit` characters, without building the full repr.

    reprlib stops at a few items per container and a few levels, so a value built from
    aliases (billions of leaves, shared) costs microseconds, not gigabytes.
    """
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxdict = 2, 4, 4
    shortener.maxstring, shortener.maxother = limit, limit
    return one_line(shortener.repr(value), limit)

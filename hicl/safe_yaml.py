"""Reading YAML a user hands us, with limits: nothing in a manifest may hang, flood or surprise.

`yaml.safe_load` never runs code, but it still accepts a key given twice (the last silently wins),
alias "bombs" that expand exponentially once validated, nesting deep enough to overflow the stack,
and files of any size. `read_yaml_file` / `read_yaml_text` refuse all of these with a one-line
`HiclError`: files above `MAX_BYTES`, text that is not UTF-8, duplicate keys, more than
`MAX_ALIASES` aliases, nesting deeper than `MAX_DEPTH`.

Numbers follow YAML 1.2 rather than PyYAML's YAML 1.1: `1e-6` and `1e6` (no dot) are floats, as a
person writing a learning rate means them, not strings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

from hicl.errors import HiclError

MAX_BYTES = 1_000_000
MAX_ALIASES = 32
MAX_DEPTH = 32


class _LimitError(yaml.YAMLError):
    pass


# YAML 1.2's float: a mantissa with or without a dot, an optional exponent (YAML 1.1 needs both the dot
# and a signed exponent, so it reads `1e-6` as a string).
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _LimitError(f"more than {MAX_ALIASES} YAML aliases")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(f"nested deeper than {MAX_DEPTH} levels")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if duplicate:
                line = key_node.start_mark.line + 1
                raise _LimitError(f"key {_shorten(key)} is given twice (line {line})")
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "-+0123456789.":
    _StrictLoader.yaml_implicit_resolvers.setdefault(_first, []).append(("tag:yaml.org,2002:float", _FLOAT))


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_yaml_text(text: str, source: str) -> Any:
    """The YAML value of `text`; `source` names it in the one-line error."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _LimitError as exc:
        raise HiclError(f"{source}: {exc}") from None
    except (ConstructorError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise HiclError(f"{source}: not valid YAML{where} ({_shorten(problem, 120)})") from None
    except RecursionError:
        raise HiclError(f"{source}: nested too deeply") from None


def read_yaml_file(path: Path) -> Any:
    """The YAML value of a file of at most `MAX_BYTES` UTF-8 bytes."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise HiclError(f"{path}: {size} bytes; a manifest may have at most {MAX_BYTES}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HiclError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return read_yaml_text(text, str(path))

"""One small generic registry: names -> members, for every extensible family of hicl.

A `Registry` maps a name to a member (an augmentation op, a method class, a data source, an export
format); registering a name twice is an error, and an unknown name is a one-line error that lists the
known names. `import_package` imports every module of a package (each module registers its members
when imported), and `import_plugins` imports users' own modules by dotted name, so that one new module
is all it takes to add a member. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import re
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Generic, TypeVar

from hicl.errors import HiclError

T = TypeVar("T")

# dotted Python module names only: a plugin is never a file path or anything fetched
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UnknownName(HiclError, KeyError):
    """A name no module registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> member for one family (`kind` names it in messages: "augmentation op")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._members: dict[str, T] = {}

    def register(self, name: str, member: T) -> T:
        """Add `member` under `name` (refused when the name is taken); returns the member."""
        if name in self._members:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._members[name] = member
        return member

    def unknown(self, name: object) -> str:
        """The one-line message for a name that is not registered."""
        return f"unknown {self.kind} {name!r}; expected one of {', '.join(self._members)}"

    def __getitem__(self, name: str) -> T:
        if name not in self._members:
            raise UnknownName(self.unknown(name))
        return self._members[name]

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def names(self) -> tuple[str, ...]:
        return tuple(self._members)

    def values(self) -> list[T]:
        return list(self._members.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._members.items())


def import_package(package: str) -> None:
    """Import every module of `package` (sorted by name), which registers what they define."""
    root = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
        importlib.import_module(f"{package}.{info.name}")


def import_plugins(modules: Sequence[str], where: str) -> list[ModuleType]:
    """Import users' modules by dotted name; a bad name or a failing import is one HiclError naming it."""
    imported = []
    for name in modules:
        if not MODULE_NAME.match(name):
            raise HiclError(f"{where}: {name!r} is not a Python module name (plugins are importable modules, not paths)")
        try:
            imported.append(importlib.import_module(name))
        except Exception as exc:  # a plugin's own error is the user's to fix: report it on one line
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HiclError(f"{where}: cannot import plugin module {name!r}: {detail}") from None
    return imported


def module_record(module: ModuleType) -> dict[str, str]:
    """What identifies a plugin module: its distribution's version when it has one, else its file's SHA-256."""
    top = module.__name__.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        return {"module": module.__name__, "version": metadata.version(dist)}
    path = getattr(module, "__file__", None)
    if path is None:
        return {"module": module.__name__}
    return {"module": module.__name__, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}

"""Typed registries of named components.

A registry maps a name to a factory (class or function). It rejects duplicate names and, on a miss, lists
the registered names, so a typo in a spec fails with the choices in the message.  Components may declare
what they need from the rest of the experiment (``requires``) and what they offer (``provides``); the spec
validator checks these before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate component name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    requires: frozenset[str] = field(default_factory=frozenset)
    provides: frozenset[str] = field(default_factory=frozenset)
    summary: str = ""


class Registry(Generic[T]):
    """A named collection of component factories for one axis (e.g. ``fusion``)."""

    def __init__(self, axis: str):
        self.axis = axis
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        *,
        requires: tuple[str, ...] | set[str] = (),
        provides: tuple[str, ...] | set[str] = (),
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@FUSIONS.register("dfblock", requires={"words"})``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self.add(name, factory, requires=requires, provides=provides)
            return factory

        return deco

    def add(self, name: str, factory: Callable[..., T], *, requires=(), provides=()) -> None:
        if name in self._entries:
            raise RegistryError(
                f"{self.axis}: '{name}' is already registered (by {self._entries[name].factory!r})"
            )
        doc = (factory.__doc__ or "").strip().splitlines()
        self._entries[name] = Entry(
            name, factory, frozenset(requires), frozenset(provides), doc[0] if doc else ""
        )

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.axis} '{name}'; registered: {', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def get(self, name: str) -> Callable[..., T]:
        return self.entry(name).factory

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.axis!r}, {self.names()})"


# One registry per axis of the study. Modules under dfgan/nn and dfgan/data register into these.
BACKBONES: Registry = Registry("backbone")
DISCRIMINATORS: Registry = Registry("discriminator")
HEADS: Registry = Registry("head")
REGULARISERS: Registry = Registry("regulariser")
FUSIONS: Registry = Registry("fusion")
TEXT_ENCODERS: Registry = Registry("text_encoder")
DATASETS: Registry = Registry("dataset")

ALL = {
    r.axis: r for r in (BACKBONES, DISCRIMINATORS, HEADS, REGULARISERS, FUSIONS, TEXT_ENCODERS, DATASETS)
}

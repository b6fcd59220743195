"""Name -> implementation registries with a decorator, in the style of verl's ``core_algos``.

Every correction, policy loss, divergence and IS-Reshape kernel is registered exactly once, next
to its implementation, together with the method parameters it reads (``Param``) and the paper
it comes from. Adding a method touches one module: the registries, the ``PolicyLoss`` kwargs,
the CLI flags and the README table are all derived from what is registered here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple


@dataclass(frozen=True)
class Param:
    """A method parameter: ``PolicyLoss(**{name: value})`` and ``--name value`` on the CLI.

    ``check(value)`` returns an error message (str) when the value is out of range, else None.
    ``nargs=2`` marks a pair such as a ``(low, high)`` range.
    """

    name: str
    default: Any
    help: str
    type: type = float
    nargs: Optional[int] = None
    choices: Optional[Callable[[], Iterable[str]]] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    optional: bool = False  # None is an accepted value

    def validate(self, value: Any) -> Any:
        """Return ``value`` normalised (pairs become tuples), or raise ValueError."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.name} must be set (got None)")
        if self.nargs is not None:
            try:
                value = tuple(self.type(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{self.name} must be {self.nargs} numbers, got {value!r}") from None
            if len(value) != self.nargs:
                raise ValueError(f"{self.name} must be {self.nargs} numbers, got {value!r}")
        else:
            try:
                value = self.type(value)
            except (TypeError, ValueError):
                raise ValueError(f"{self.name} must be a {self.type.__name__}, got {value!r}") from None
        if self.choices is not None:
            allowed = list(self.choices())
            if value not in allowed:
                raise ValueError(f"{self.name}={value!r} is not one of {allowed}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ValueError(f"{self.name}={value!r}: {problem}")
        return value


@dataclass(frozen=True)
class Entry:
    """One registered method."""

    name: str
    fn: Callable
    aliases: Tuple[str, ...] = ()
    params: Tuple[Param, ...] = ()
    source: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:  # meta flags read like attributes: entry.needs_rollout
        meta = object.__getattribute__(self, "meta")
        if key in meta:
            return meta[key]
        raise AttributeError(key)


class Registry:
    """A named collection of methods of one kind ("correction", "policy loss", ...)."""

    def __init__(self, kind: str, defaults: Optional[Dict[str, Any]] = None) -> None:
        self.kind = kind
        self._defaults = dict(defaults or {})
        self._entries: Dict[str, Entry] = {}
        self._aliases: Dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        aliases: Iterable[str] = (),
        params: Iterable[Param] = (),
        source: str = "",
        **meta: Any,
    ) -> Callable[[Callable], Callable]:
        """Decorator: ``@REGISTRY.register("name", source="arXiv ...", flag=True)``."""

        def decorate(fn: Callable) -> Callable:
            aliases_t = tuple(aliases)
            for key in (name, *aliases_t):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            entry_meta = {**self._defaults, **meta}
            self._entries[name] = Entry(name, fn, aliases_t, tuple(params), source, entry_meta)
            for alias in aliases_t:
                self._aliases[alias] = name
            return fn

        return decorate

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; ValueError if unknown."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.names(with_aliases=True)}")

    def get(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def names(self, with_aliases: bool = False, **meta_filter: Any) -> List[str]:
        """Registered names (in registration order), optionally only those whose meta matches."""
        out = [
            n
            for n, e in self._entries.items()
            if all(e.meta.get(k) == v for k, v in meta_filter.items())
        ]
        if with_aliases:
            out += [a for a, n in self._aliases.items() if n in out]
        return out

    def entries(self) -> List[Entry]:
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self):
        return iter(self._entries.values())


def positive(value: float) -> Optional[str]:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> Optional[str]:
    return None if value >= 0 else "must be >= 0"


def unit_interval(value: float) -> Optional[str]:
    return None if 0.0 <= value <= 1.0 else "must lie in [0, 1]"


def at_least_one(value: float) -> Optional[str]:
    return None if value >= 1.0 else "must be >= 1"


def range_around_one(value: Tuple[float, float]) -> Optional[str]:
    """A ``(low, high)`` band for a ratio: 0 <= low <= 1 <= high and low < high."""
    low, high = value
    if not low <= high:
        return f"low ({low}) must not exceed high ({high})"
    if low < 0:
        return "low must be >= 0"
    if not low <= 1.0 <= high:
        return "the band must contain 1 (an on-policy ratio), i.e. low <= 1 <= high"
    if low == high:
        return "low and high must differ"
    return None

"""Name -> implementation registries with a decorator, in the style of verl's ``core_algos``.

Every correction, policy loss, divergence and IS-Reshape kernel is registered exactly once, next
to its implementation, together with every fact about it: the method parameters it reads
(``Param``), the log-probs it needs, its metrics, its preset and the paper it comes from. Config
validation, the CLI flags, the README tables, the lab, the bench and the test tables are derived
from these registrations.

Entries are typed: each registry declares the dataclass of its entries (``entry_type``), so a
misspelt registration keyword is a ``TypeError`` at import time, not a silently ignored flag.

Registration does not depend on import order: a registry created with ``load=`` imports the
modules that register its methods the first time it is read, and lists methods in the order of
those modules (then in registration order), whatever was imported first. ``"package.*"`` in
``load`` stands for every module of the package, so a new method is one new module: modules not
named explicitly come after the named ones, in alphabetical order.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import pkgutil
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32
ECHO_LIMIT = 80  # characters of a user's input echoed in an error message


def shorten(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing input in a one-line message."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not replace the real error
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit - 20]}...{text[-12:]} ({len(text)} characters)"


def float32_problem(value: float) -> Optional[str]:
    """Why ``value`` cannot be a float32 method parameter (None if it can).

    It must be finite, within float32's range and not denormal in float32, because every method
    computes in float32 (a denormal threshold or a 1e39 width silently becomes 0 or inf there).
    """
    if math.isnan(value) or math.isinf(value):
        return "must be finite"
    if abs(value) > FLOAT32_MAX:
        return f"must be representable in float32 (|value| <= {FLOAT32_MAX:.4g})"
    if value != 0.0 and abs(struct.unpack("f", struct.pack("f", value))[0]) < FLOAT32_TINY:
        return f"must not be denormal in float32 (|value| >= {FLOAT32_TINY:.4g} or 0)"
    return None


@dataclass(frozen=True)
class Param:
    """A method parameter: ``PolicyLoss(**{name: value})`` and ``--name value`` on the CLI.

    ``check(value)`` returns an error message (str) when the value is out of range, else None.
    ``nargs=2`` marks a pair such as a ``(low, high)`` range. Float values must also be finite,
    representable in float32 and not denormal (``float32_problem``).
    """

    name: str
    default: Any
    help: str
    type: type = float
    nargs: Optional[int] = None
    choices: Optional[Callable[[], Iterable[str]]] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    optional: bool = False  # None is an accepted value
    metavar: Optional[Tuple[str, ...]] = None  # names of a pair's values (README, --help)

    def validate(self, value: Any) -> Any:
        """Return ``value`` normalised (pairs become tuples), or raise ValueError.

        Types are checked, not coerced: a float parameter takes a real number (not a bool, a string
        or a tensor), a str parameter a string, and every float is finite, representable in float32
        and not denormal there."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.name} must be set (got None)")
        if self.nargs is not None:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ValueError(f"{self.name} must be {self.nargs} numbers, got {shorten(value)}")
            if len(value) != self.nargs:
                raise ValueError(f"{self.name} must be {self.nargs} numbers, got {shorten(value)}")
            value = tuple(self._scalar(v) for v in value)
        else:
            value = self._scalar(value)
        if self.type is float:
            for v in value if self.nargs is not None else (value,):
                problem = float32_problem(v)
                if problem:
                    raise ValueError(f"{self.name}={shorten(value)}: {problem}")
        if self.choices is not None:
            allowed = list(self.choices())
            if value not in allowed:
                raise ValueError(f"{self.name}={shorten(value)} is not one of {allowed}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ValueError(f"{self.name}={shorten(value)}: {problem}")
        return value

    def _scalar(self, value: Any) -> Any:
        """One value of the declared type (ints are accepted for floats), else ValueError."""
        if self.type is float:
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                return float(value)
            raise ValueError(f"{self.name} must be a float, got {shorten(value)}")
        if self.type is str:
            if isinstance(value, str):
                return value
            raise ValueError(f"{self.name} must be a string, got {shorten(value)}")
        if self.type is int:
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                return int(value)
            raise ValueError(f"{self.name} must be an integer, got {shorten(value)}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"{self.name} must be True or False, got {shorten(value)}")
        try:
            return self.type(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be a {self.type.__name__}, got {shorten(value)}") from None


@dataclass(frozen=True)
class Entry:
    """One registered method; registries extend it with their own typed fields."""

    name: str
    fn: Callable
    aliases: Tuple[str, ...] = ()
    params: Tuple[Param, ...] = ()
    source: str = ""

    @property
    def meta(self) -> Dict[str, Any]:
        """The registry-specific fields as a dict (read-only view, for printing and filtering)."""
        base = {f.name for f in dataclasses.fields(Entry)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in base}


def entry_type_from_defaults(kind: str, defaults: Dict[str, Any]) -> Type[Entry]:
    """A typed ``Entry`` subclass whose extra fields are ``defaults`` (name -> default value)."""
    fields = [(key, type(value) if value is not None else Any, field(default=value)) for key, value in defaults.items()]
    name = "".join(part.capitalize() for part in kind.replace("-", " ").split()) + "Entry"
    return dataclasses.make_dataclass(name, fields, bases=(Entry,), frozen=True)


class Registry:
    """A named collection of methods of one kind ("correction", "policy loss", ...).

    ``entry_type`` is the dataclass of the entries (a subclass of ``Entry``); without it one is
    built from ``defaults``. ``load`` names the modules whose import registers every method of
    this kind; they are imported on the first read, so the registry is complete whichever module
    was imported first.
    """

    def __init__(
        self,
        kind: str,
        defaults: Optional[Dict[str, Any]] = None,
        *,
        entry_type: Optional[Type[Entry]] = None,
        load: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.entry_type = entry_type or entry_type_from_defaults(kind, dict(defaults or {}))
        self._load = tuple(load)
        self._loaded = not self._load
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
        known = {f.name for f in dataclasses.fields(self.entry_type)} - {"name", "fn", "aliases", "params", "source"}
        unknown = sorted(set(meta) - known)
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown registration field(s) {unknown}; known: {sorted(known)}")

        def decorate(fn: Callable) -> Callable:
            aliases_t = tuple(aliases)
            for key in (name, *aliases_t):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[name] = self.entry_type(
                name=name, fn=fn, aliases=aliases_t, params=tuple(params), source=source, **meta
            )
            for alias in aliases_t:
                self._aliases[alias] = name
            return fn

        return decorate

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._load:
                if module.endswith(".*"):
                    package = importlib.import_module(module[:-2])
                    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                        importlib.import_module(f"{package.__name__}.{info.name}")
                else:
                    importlib.import_module(module)

    def _order(self, entry: Entry):
        module = getattr(entry.fn, "__module__", "")
        named = [m for m in self._load if not m.endswith(".*")]
        return (named.index(module), "") if module in named else (len(named), module)

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; ValueError if unknown (or not a string)."""
        self._ensure_loaded()
        if not isinstance(name, str):
            raise ValueError(f"a {self.kind} name must be a string, got {shorten(name)}")
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ValueError(f"unknown {self.kind} {shorten(name)}; choose from {self.names(with_aliases=True)}")

    def get(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def entries(self) -> List[Entry]:
        """Every entry, in the order of the ``load`` modules, then in registration order."""
        self._ensure_loaded()
        entries = list(self._entries.values())
        return sorted(entries, key=self._order)  # stable: registration order within a module

    def names(self, with_aliases: bool = False, **meta_filter: Any) -> List[str]:
        """Registered names, optionally only those whose fields equal ``meta_filter``."""
        out = [e.name for e in self.entries() if all(getattr(e, k) == v for k, v in meta_filter.items())]
        if with_aliases:
            out += [a for a, n in self._aliases.items() if n in out]
        return out

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries or name in self._aliases

    def __iter__(self):
        return iter(self.entries())


def positive(value: float) -> Optional[str]:
    return None if value > 0 else "must be > 0"


def scale_in(low: float, high: float) -> Callable[[float], Optional[str]]:
    """A check for a positive scale in [low, high]: outside it a method's loss or gradient overflows float32
    (e.g. SAPO's 4/tau gate with tau = 1e-38). A picklable callable, not a closure."""
    return _ScaleIn(low, high)


@dataclass(frozen=True)
class _ScaleIn:
    low: float
    high: float

    def __call__(self, value: float) -> Optional[str]:
        if not value > 0:
            return "must be > 0"
        return None if self.low <= value <= self.high else f"must lie in [{self.low:g}, {self.high:g}]"


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

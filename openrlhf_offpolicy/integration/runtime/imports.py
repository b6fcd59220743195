"""Post-import hooks: run a callback right after a named module has executed, in any process.

``when_imported(name, callback)`` calls ``callback(module)`` now if ``name`` is already imported,
else as soon as its import finishes (before the importer's ``from name import x`` binds anything),
through a finder on ``sys.meta_path`` that wraps the module's loader for that one import. Standard
library only: the Ray worker setup hook installs it without importing torch, vLLM or DeepSpeed.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Callable, Dict, List, Optional

Callback = Callable[[object], None]

_callbacks: Dict[str, List[Callback]] = {}
_lock = threading.RLock()


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the callbacks registered for the module."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Put the real loader back, so inspect/linecache/pkgutil see the module as if we were not here.
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _fire(module.__name__, module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds watched modules with the other finders and wraps their loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


_state = threading.local()


def _fire(name: str, module) -> None:
    """Run the module's callbacks. A module imported *by* a callback (a replacement importing
    upstream code) is handled once that callback is done, so no callback ever sees a replacement
    module half-imported; all of this happens before the outermost import statement returns."""
    _run(None, name, module)


def _run(callback: Optional[Callback], name: str, module) -> None:
    """Run ``callback`` (None: every callback of ``name``) on ``module``, deferred while another runs."""
    pending = getattr(_state, "pending", None)
    if pending is not None:
        pending.append((callback, name, module))
        return
    _state.pending = [(callback, name, module)]
    try:
        while _state.pending:
            one, current, mod = _state.pending.pop(0)
            if one is None:
                with _lock:
                    callbacks = list(_callbacks.get(current, ()))
            else:
                callbacks = [one]
            for cb in callbacks:
                cb(mod)
    finally:
        _state.pending = None


def imported(name: str):
    """The module if it is imported and has finished executing, else None."""
    module = sys.modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def when_imported(name: str, callback: Callback) -> None:
    """Run ``callback(module)`` once ``name`` is imported (now, if it already is)."""
    with _lock:
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        _callbacks.setdefault(name, []).append(callback)
    module = imported(name)
    if module is not None:
        _run(callback, name, module)


def clear() -> None:
    """Forget every callback and take the finder off ``sys.meta_path``."""
    with _lock:
        _callbacks.clear()
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)


def watched() -> List[str]:
    with _lock:
        return sorted(_callbacks)

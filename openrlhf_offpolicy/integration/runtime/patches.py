"""Install this project into a process running OpenRLHF 0.11.2: the one place that patches it.

``install(settings)`` registers, for every entry of ``patch_table.PATCHES`` with a wrapper whose
condition holds, a post-import hook on the entry's module: the entry's active wrappers replace the
symbol, composed in table order, when that module is imported (or now, if it already is). Nothing
is imported here: a process that never imports an upstream module never pays for it. ``current()``
is the settings installed (the wrappers read it when they are called, so a re-install with final
settings reaches wrappers that upstream bound earlier). ``undo()`` restores every original and removes the hooks.

Standard library only (plus ``settings`` and ``patch_table``): the Ray worker setup hook calls it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from . import imports
from .patch_table import PATCHES, Patch, Wrapper
from .settings import OffPolicySettings

_originals: Dict[Tuple[int, str], Tuple[object, str, object]] = {}  # (id(owner), name) -> (owner, name, original)
_replacements: Dict[int, object] = {}  # id(replacement) -> the upstream original it stands for
_applied_log: List[str] = []
_installed: Optional[OffPolicySettings] = None


def current() -> Optional[OffPolicySettings]:
    """The settings installed in this process (None: not installed)."""
    return _installed


def applied() -> List[str]:
    """The symbols patched so far in this process, in order (``module.target``)."""
    return list(_applied_log)


def upstream_value(owner, name: str):
    """The upstream attribute, even where one of our replacements currently stands."""
    key = (id(owner), name)
    if key in _originals:
        return _originals[key][2]
    value = getattr(owner, name)
    return _replacements.get(id(value), value)


def _apply_entry(patch: Patch, wrappers: Tuple[Wrapper, ...], module, settings: OffPolicySettings) -> None:
    """Replace the entry's symbol by its active wrappers, composed in table order on upstream's original."""
    owner, name = patch.owner_and_name(module)
    key = (id(owner), name)
    original = upstream_value(owner, name)
    replacement = original
    for wrapper in wrappers:
        replacement = wrapper.make(replacement, settings)
    _originals.setdefault(key, (owner, name, original))
    _replacements[id(replacement)] = original
    setattr(owner, name, replacement)
    _applied_log.append(patch.symbol)


def install(settings: OffPolicySettings) -> None:
    """Patch every module of the table when it is imported (now, for those already imported)."""
    global _installed
    if _installed == settings:
        return
    if _installed is not None:
        undo()
    _installed = settings
    if settings.cpu_backend:
        from .flash_attn_placeholder import install_flash_attn_placeholder

        install_flash_attn_placeholder()
    by_module: Dict[str, List[Tuple[Patch, Tuple[Wrapper, ...]]]] = {}
    for patch in PATCHES:
        wrappers = patch.active(settings)
        if wrappers:
            by_module.setdefault(patch.module, []).append((patch, wrappers))
    for module_name, entries in by_module.items():
        imports.when_imported(module_name, _applier(entries, settings))


def _applier(entries: List[Tuple[Patch, Tuple[Wrapper, ...]]], settings: OffPolicySettings):
    def on_import(module) -> None:
        for patch, wrappers in entries:
            _apply_entry(patch, wrappers, module, settings)

    return on_import


def undo() -> None:
    """Restore every replaced upstream symbol and remove the import hooks."""
    global _installed
    imports.clear()
    for owner, name, original in reversed(list(_originals.values())):
        setattr(owner, name, original)
    _originals.clear()
    _replacements.clear()
    _applied_log.clear()
    _installed = None

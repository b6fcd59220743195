"""The patch table's one factory shape, ``(original, settings) -> replacement``, for a replacement that
reads no settings (``settings_free(with_x)`` instead of a two-line adapter per entry)."""

from __future__ import annotations

from typing import Any, Callable


def settings_free(wrapper: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    """``wrapper(original)`` as a factory ``(original, settings) -> wrapper(original)``."""

    def factory(original, settings):
        return wrapper(original)

    factory.__name__ = factory.__qualname__ = wrapper.__name__
    factory.__doc__ = wrapper.__doc__
    return factory

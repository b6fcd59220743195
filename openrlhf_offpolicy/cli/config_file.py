"""Read a ``--config FILE.yaml`` preset defensively: a hostile or broken file is one line, fast.

A preset is a flat mapping ``flag: value`` (docs/design.md, "The CLI": presets). What is refused, each as a
``UsageError`` naming the file (exit status 2, one line, before anything heavy):
  * anything that is not a regular file (a FIFO would block ``open`` forever, a device never ends),
    and files over ``MAX_BYTES``;
  * bytes that are not UTF-8;
  * YAML aliases (``*name``): an alias bomb expands exponentially, and a preset never needs one;
  * nesting deeper than ``MAX_DEPTH`` (the composer would recurse until ``RecursionError``);
  * a key given twice (YAML would keep the last one silently): the message names both lines;
  * non-string keys, and a ``config`` key (a preset cannot include another preset);
  * tags other than YAML's standard ones (``!!python/...`` never constructs anything: safe loader).
Standard library and PyYAML only.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .checks import UsageError
from ..integration.runtime.redaction import ECHO_LIMIT

MAX_BYTES = 64 << 10  # 64 KiB: the presets are under 2 KB; the worst case (a flat list of 30k values) answers in < 1 s
MAX_DEPTH = 32


def _short(text: str) -> str:
    return text if len(text) <= ECHO_LIMIT else f"{text[:ECHO_LIMIT - 20]}...{text[-12:]}"


# libyaml when available: the Python parser takes ~14 s per MB of a flow list.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_events(text: str, where: str) -> None:
    """One pass over the YAML events (no object is built): refuse aliases, merge keys, non-scalar keys,
    nesting deeper than ``MAX_DEPTH`` and a key given twice in one mapping (naming both lines)."""
    # One frame per open collection: [is_mapping, expecting_key, {key: line}].
    frames: List[list] = []

    def fail(event, message: str) -> None:
        raise UsageError(f"{where}: line {event.start_mark.line + 1}: {message}")

    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            fail(event, f"YAML aliases (*{_short(str(event.anchor))}) are not accepted in a preset; "
                 "write the value out")
        is_node = isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent))
        if is_node and frames and frames[-1][0]:
            frame = frames[-1]
            if frame[1]:  # this node is a key
                if not isinstance(event, yaml.ScalarEvent):
                    fail(event, "a key must be a flag name, not a collection")
                key, line = event.value, event.start_mark.line + 1
                if key == "<<" and event.implicit[0]:
                    fail(event, "YAML merge keys (<<) are not accepted in a preset")
                if len(frames) == 1 and key.lstrip("-") == "config":
                    fail(event, "a preset cannot name another preset (key 'config'); give --config twice instead")
                if key in frame[2]:
                    raise UsageError(f"{where}: key {_short(repr(key))} is given twice, on lines {frame[2][key]} "
                                     f"and {line}")
                frame[2][key] = line
            frame[1] = not frame[1]
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(frames) >= MAX_DEPTH:
                fail(event, f"nested deeper than {MAX_DEPTH} levels")
            frames.append([isinstance(event, yaml.MappingStartEvent), True, {}])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            frames.pop()


def read_text(path: str) -> str:
    """The file's text: a regular file, at most ``MAX_BYTES``, UTF-8 (else one-line UsageError)."""
    where = f"--config {_short(path)}"
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise UsageError(f"{where}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{where}: not a regular file")
        if info.st_size > MAX_BYTES:
            raise UsageError(f"{where}: {info.st_size} bytes, over the {MAX_BYTES}-byte limit for a preset")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise UsageError(f"{where}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise UsageError(f"{where}: over the {MAX_BYTES}-byte limit for a preset")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{where}: not UTF-8 text (byte {e.start})") from None


# The presets ship inside the package (``configs/`` in a checkout links to this folder).
PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def packaged_file(path: str) -> Optional[str]:
    """The packaged preset a ``configs/NAME.yaml`` path names (None for any other path)."""
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) != 2 or parts[0] != "configs" or not parts[1].endswith(".yaml"):
        return None
    return os.path.join(PACKAGED_CONFIGS, parts[1])


def packaged_preset(path: str) -> str:
    """``configs/NAME.yaml`` as the packaged preset when no such file exists here (an installed wheel,
    or a run outside the checkout); every other path unchanged."""
    packaged = packaged_file(path)
    if os.path.lexists(path) or packaged is None or not os.path.isfile(packaged):
        return path
    return packaged


def load_preset(path: str) -> Tuple[Dict[str, Any], str]:
    """(the preset's mapping, ``"--config PATH"`` for messages); UsageError naming the file otherwise."""
    where = f"--config {_short(path)}"
    text = read_text(packaged_preset(path))
    try:
        check_events(text, where)
        data = yaml.load(text, Loader=_LOADER)
    except UsageError:
        raise
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{where}: not valid YAML ({_short(first)})") from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as e:
        raise UsageError(f"{where}: cannot be read as a preset ({type(e).__name__})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping of flag: value")
    for key in data:
        if not isinstance(key, str):
            raise UsageError(f"{where}: key {_short(repr(key))} must be a flag name (a string)")
    return data, where

"""Upstream ``train_ppo_ray``'s parser and argument checks, read from its installed source.

Upstream builds its parser inside the ``if __name__ == "__main__":`` block of
``openrlhf/cli/train_ppo_ray.py``, next to module-level imports of Ray, vLLM, DeepSpeed and
flash-attn that take seconds (and need a GPU stack). The block itself only uses ``argparse``,
``os``, ``datetime`` and ``openrlhf.utils.config.hierarchize``. So the block is read from the
installed file with ``ast`` (``importlib.util.find_spec`` locates it without importing it) and
executed on its own:

  * ``upstream_parser()``: the statements before ``parser.parse_args()`` give upstream's real
    parser object, exact for whatever version is installed (nothing is copied);
  * ``run_main_block(...)``: the whole block (parse, hierarchize, upstream's own checks) with
    ``train`` replaced, which is what ``--dry_run`` and ``--help`` need: no compute, no GPU modules.

A real run still executes the whole module with ``runpy`` (``launch.run``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib.util
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

UPSTREAM_MODULE = "openrlhf.cli.train_ppo_ray"
UPSTREAM_VERSION = "0.11.2"
INSTALL_HINT = (
    f"upstream OpenRLHF {UPSTREAM_VERSION} is not installed in this Python ({sys.executable}): "
    f"run `make test` (it builds .venv with it) or `pip install openrlhf=={UPSTREAM_VERSION}`"
)
_HIERARCHIZE_MODULE = "openrlhf.utils.config"


# Values this project adds to the choices of an upstream flag (flag -> extra choices), applied to the
# parser read from source (CLI checks, --help, --dry_run). A real run must accept them too: whoever adds
# an entry here also patches upstream's parser for the runpy path.
# reinforce_max never reaches upstream's parser: the CLI hands upstream rloo (``advantages.translate_estimator``).
EXTRA_CHOICES: Dict[str, List[str]] = {"--algo.advantage.estimator": ["reinforce_max"]}


class UpstreamMissing(RuntimeError):
    """OpenRLHF is not importable; the message says how to install it (one line)."""


def _package_dir() -> str:
    try:
        spec = importlib.util.find_spec("openrlhf")  # a top-level find_spec imports nothing
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UpstreamMissing(INSTALL_HINT)
    return list(spec.submodule_search_locations)[0]


def source_path() -> str:
    """Path of the installed ``openrlhf/cli/train_ppo_ray.py``."""
    path = os.path.join(_package_dir(), "cli", "train_ppo_ray.py")
    if not os.path.isfile(path):
        raise UpstreamMissing(f"{path} is missing: reinstall with `pip install openrlhf=={UPSTREAM_VERSION}`")
    return path


def installed_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version("openrlhf")
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _main_block(path: str) -> List[ast.stmt]:
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
        ):
            return node.body
    raise RuntimeError(f"{path} has no `if __name__ == '__main__':` block; is it OpenRLHF {UPSTREAM_VERSION}?")


def _is_parse_args(stmt: ast.stmt) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "parse_args"
        for n in ast.walk(stmt)
    )


def _is_hierarchize_import(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.ImportFrom) and stmt.module == _HIERARCHIZE_MODULE


def _namespace(path: str) -> dict:
    """Globals for the block: the file's top-level standard-library imports only."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    ns = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    stdlib = [
        node for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and all(
            (alias.name if isinstance(node, ast.Import) else (node.module or "")).split(".")[0]
            in sys.stdlib_module_names
            for alias in node.names
        )
    ]
    exec(compile(ast.Module(body=stdlib, type_ignores=[]), path, "exec"), ns)
    return ns


def _run(statements: List[ast.stmt], ns: dict, path: str) -> None:
    exec(compile(ast.Module(body=statements, type_ignores=[]), path, "exec"), ns)


@functools.lru_cache(maxsize=None)
def parser_from_source(path: str) -> argparse.ArgumentParser:
    """The parser a ``train_ppo_ray.py`` file's ``__main__`` block builds (any OpenRLHF version)."""
    body = _main_block(path)
    cut = next((i for i, stmt in enumerate(body) if _is_parse_args(stmt)), None)
    if cut is None:
        raise RuntimeError(f"{path}: no parser.parse_args() in the __main__ block")
    ns = _namespace(path)
    _run(body[:cut], ns, path)
    parser = ns.get("parser")
    if not isinstance(parser, argparse.ArgumentParser):
        raise RuntimeError(f"{path}: the __main__ block builds no `parser`")
    return parser


def extend_choices(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``EXTRA_CHOICES`` to the parser's actions (idempotent)."""
    for action in parser._actions:
        for flag in action.option_strings:
            extra = [c for c in EXTRA_CHOICES.get(flag, ()) if action.choices is not None and c not in action.choices]
            if extra:
                action.choices = [*action.choices, *extra]
    return parser


def upstream_parser() -> argparse.ArgumentParser:
    """Upstream's own ``ArgumentParser`` (built from the installed source, nothing heavy imported)."""
    return extend_choices(parser_from_source(source_path()))


def upstream_flags() -> List[str]:
    """Every ``--flag`` upstream's parser accepts."""
    return [s for a in upstream_parser()._actions for s in a.option_strings if s.startswith("--")]


def upstream_hierarchize() -> Callable:
    """``openrlhf.utils.config.hierarchize``, loaded from its file alone (``openrlhf.utils`` imports
    DeepSpeed; the file itself imports only ``types``)."""
    path = os.path.join(_package_dir(), *_HIERARCHIZE_MODULE.split(".")[1:]) + ".py"
    spec = importlib.util.spec_from_file_location("_openrlhf_utils_config_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.hierarchize


def run_main_block(argv: Sequence[str], *, hierarchize: Callable, train: Callable, prog: str = "train_ppo_ray"):
    """Execute upstream's ``__main__`` block on ``argv`` with ``hierarchize`` and ``train`` given.

    Upstream's own prints (warnings about its flags) go to stderr, so a caller's stdout stays its own.
    """
    path = source_path()
    body = _main_block(path)
    if not any(_is_hierarchize_import(s) for s in body):
        raise RuntimeError(f"{path}: the __main__ block no longer imports {_HIERARCHIZE_MODULE}.hierarchize")
    ns = _namespace(path)
    ns.update(hierarchize=hierarchize, train=train)
    body = [s for s in body if not _is_hierarchize_import(s)]
    cut = next(i for i, stmt in enumerate(body) if _is_parse_args(stmt))
    old_argv = sys.argv
    sys.argv = [prog, *argv]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            _run(body[:cut], ns, path)
            extend_choices(ns["parser"])
            _run(body[cut:], ns, path)
    finally:
        sys.argv = old_argv

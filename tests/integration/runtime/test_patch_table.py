"""The patch table against the installed upstream: every patched symbol exists and is unchanged.

``upstream_symbols.json`` records, for OpenRLHF 0.11.2 / vLLM 0.29 / Ray, each patched symbol's
signature and a hash of its source. An upgrade fails here with the list of what changed: read
those upstream functions again before updating the record (``python tests/integration/
runtime/test_patch_table.py --record``).
"""

import hashlib
import importlib
import inspect
import json
import os
import sys

import pytest

from openrlhf_offpolicy.integration.runtime import imports, patches
from openrlhf_offpolicy.integration.runtime.patch_table import PATCHES
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.integration.runtime.versions import UnsupportedVersion, check_versions, release

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream_symbols.json")


def upstream_symbol(patch):
    """The symbol the patch replaces, resolved as the patch resolves it (on a ``@ray.remote`` class:
    the class Ray instantiates, whose method is upstream's under Ray's wrapper)."""
    owner, name = patch.owner_and_name(importlib.import_module(patch.module))
    return getattr(owner, name)


def fingerprint(obj) -> dict:
    target = getattr(obj, "__ray_actor_class__", obj)  # a @ray.remote class: its Python class
    try:
        signature = str(inspect.signature(target))
    except (TypeError, ValueError):
        signature = None
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        source = repr(target)
    return {"signature": signature, "source_sha256": hashlib.sha256(source.encode()).hexdigest()}


def current() -> dict:
    patches.undo()
    return {patch.symbol: fingerprint(upstream_symbol(patch)) for patch in PATCHES}


def test_every_patched_upstream_symbol_is_unchanged_since_it_was_recorded():
    with open(RECORD) as f:
        recorded = json.load(f)
    now = current()
    changed = sorted(name for name in now if recorded.get(name) != now[name])
    assert not changed, f"upstream changed under these patched symbols (read them again): {changed}"


def test_every_entry_names_an_existing_symbol_once_with_wrappers_of_the_one_factory_shape():
    symbols = [p.symbol for p in PATCHES]
    assert len(symbols) == len(set(symbols)), "one entry per upstream symbol: list its wrappers in that entry"
    for patch in PATCHES:
        assert patch.wrappers and all(w.why for w in patch.wrappers), patch.symbol
        for wrapper in patch.wrappers:
            module_name, function = wrapper.make.__qualname__.split(":")
            module = importlib.import_module(f"openrlhf_offpolicy.integration.runtime.{module_name}")
            factory = getattr(module, function)
            assert list(inspect.signature(factory).parameters) == ["original", "settings"], wrapper.make.__qualname__
        upstream_symbol(patch)


THIRD_PARTY = ("torch", "ray", "vllm", "openrlhf", "deepspeed", "transformers")


def replacements_outside_the_table(tree, rel):
    """Where a module of the package replaces a third-party symbol itself: an assignment to an attribute
    of an imported third-party module (``torch.cuda.current_device = ...``), or a wrapper
    (``functools.wraps``) that sets a function on ``self`` (a per-call instance patch)."""
    import ast

    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in THIRD_PARTY}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in THIRD_PARTY:
            modules |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        for target in node.targets if isinstance(node, ast.Assign) else []:
            root = target
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(target, ast.Attribute) and isinstance(root, ast.Name) and root.id in modules:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(target)} = ...")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                "wraps" in ast.unparse(d) for d in node.decorator_list):
            local_functions = {f.name for f in ast.walk(node)
                               if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f is not node}
            for sub in ast.walk(node):
                for target in sub.targets if isinstance(sub, ast.Assign) else []:
                    value = sub.value
                    is_function = isinstance(value, ast.Lambda) or (
                        isinstance(value, ast.Name) and value.id in local_functions)
                    if isinstance(target, ast.Attribute) and ast.unparse(target.value) == "self" and is_function:
                        found.append(f"{rel}:{sub.lineno}: {ast.unparse(target)} = {ast.unparse(value)}")
    return found


def test_the_table_is_one_literal_and_patches_py_is_the_only_module_that_replaces_upstream():
    """No ``PATCHES +=``, no ``register()``, no replacement of a third-party symbol elsewhere (module
    attributes, per-call instance patches); a ``setattr`` outside patches.py sets our own data."""
    import ast

    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(patches.__file__))))
    table = ast.parse(open(os.path.join(package, "integration", "runtime", "patch_table.py")).read())
    writes = [n for n in ast.walk(table) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))
              and "PATCHES" in ast.unparse(n.targets[0] if isinstance(n, ast.Assign) else n.target)]
    assert len(writes) == 1 and isinstance(writes[0], ast.AnnAssign), [ast.unparse(w) for w in writes]
    own_data = {  # file -> what its setattr sets
        os.path.join("integration", "runtime", "patches.py"): "the table's replacements and their undo",
        os.path.join("integration", "runtime", "flash_attn_placeholder.py"): "attributes of our placeholder module",
        os.path.join("integration", "driver", "smoke.py"): "fields of the tiny model config the smoke test builds",
        os.path.join("integration", "runtime", "topk.py"): "trimmed tensor fields of an experience (data)",
        os.path.join("integration", "runtime", "policy_versions.py"): "the version tag of an experience (data)",
        os.path.join("integration", "driver", "launch.py"): "sys.argv while upstream's __main__ runs (swapped)",
    }
    setattrs, replaced = {}, []
    for root, _, files in os.walk(package):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, package)
            tree = ast.parse(open(path).read())
            calls = [n.lineno for n in ast.walk(tree)
                     if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setattr"]
            if calls:
                setattrs[rel] = calls
            if rel != os.path.join("integration", "runtime", "patches.py"):
                replaced += replacements_outside_the_table(tree, rel)
    assert set(setattrs) <= set(own_data), {k: v for k, v in setattrs.items() if k not in own_data}
    assert replaced == []


def test_the_scan_finds_a_module_attribute_swap_and_a_per_call_instance_patch():
    import ast

    planted = ast.parse(
        "import functools\nimport torch\nfrom openrlhf.trainer import ppo_utils\n"
        "def f():\n    torch.cuda.current_device = lambda: 0\n    ppo_utils.Experience = object\n"
        "def with_x(original):\n    @functools.wraps(original)\n    def wrapped(self):\n"
        "        def tagged():\n            return 1\n        self.method = tagged\n"
        "        self.data = 1\n    return wrapped\n")
    found = replacements_outside_the_table(planted, "planted.py")
    assert [line.split(":")[1] for line in found] == ["5", "6", "12"], found


@pytest.mark.parametrize("settings", [
    OffPolicySettings(logprobs_topk=3, match_rollout_sampling=True, rollout_top_p=0.9,
                      advantage_estimator="reinforce_max"),
    OffPolicySettings(routing_replay="r3"),
    OffPolicySettings(routing_replay="r2"),
], ids=["topk-truncation-reinforce_max", "routing-r3", "routing-r2"])
def test_undo_restores_every_symbol_including_the_launcher_hooks(monkeypatch, settings):
    from openrlhf_offpolicy.integration.runtime import run_state
    monkeypatch.setattr(run_state, "_RUN", object())  # as while launch.run executes
    modules = sorted({p.module for p in PATCHES})
    for name in modules:
        importlib.import_module(name)
    before = {p.symbol: upstream_symbol(p) for p in PATCHES}
    active = {p.symbol for p in PATCHES if p.active(settings)}
    assert {"ray.init", "ray.is_initialized", "openrlhf.utils.config.hierarchize"} <= active  # the launcher hooks
    patches.install(settings)
    try:
        assert sorted(set(patches.applied())) == sorted(active)
        assert all(upstream_symbol(p) is not before[p.symbol] for p in PATCHES if p.symbol in active)
    finally:
        patches.undo()
    assert {p.symbol: upstream_symbol(p) for p in PATCHES} == before
    assert imports.watched() == []


def test_a_module_imported_after_install_is_patched_when_it_is_imported(tmp_path, monkeypatch):
    (tmp_path / "late_module_for_hook_test.py").write_text("def f():\n    return 'upstream'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    imports.when_imported("late_module_for_hook_test", lambda m: seen.append(m.f()))
    try:
        assert seen == []
        import late_module_for_hook_test  # noqa: F401

        assert seen == ["upstream"]
        assert late_module_for_hook_test.__loader__.__class__.__name__ != "_Loader"
        assert inspect.getsource(late_module_for_hook_test.f).startswith("def f")
    finally:
        imports.clear()
        sys.modules.pop("late_module_for_hook_test", None)


@pytest.mark.parametrize("versions,message", [
    ({"openrlhf": "0.11.3", "vllm": "0.29.0"}, "patches openrlhf==0.11.2, but openrlhf 0.11.3 is installed"),
    ({"openrlhf": "0.11.2", "vllm": "0.30.1"}, "tested with vllm>=0.29.0,<0.30, but vllm 0.30.1 is installed"),
    ({"openrlhf": None, "vllm": "0.29.0"}, "openrlhf is not installed"),
])
def test_the_version_gate_names_the_installed_and_the_expected_versions(monkeypatch, versions, message):
    from openrlhf_offpolicy.integration.runtime import versions as module
    monkeypatch.setattr(module, "installed", versions.get)
    with pytest.raises(UnsupportedVersion, match=message.replace("(", r"\(")):
        check_versions()


def test_the_installed_upstream_passes_the_gate():
    check_versions()
    assert release("0.29.0rc1+cu128") == (0, 29, 0)


if __name__ == "__main__" and "--record" in sys.argv:
    with open(RECORD, "w") as f:
        json.dump(current(), f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"recorded {RECORD}")

"""The patch table against the installed upstream: every patched symbol exists and is unchanged.

``upstream_symbols.json`` records, for OpenRLHF 0.11.2 / vLLM 0.29 / Ray, each patched symbol's
signature and a hash of its source. An upgrade fails here with the list of what changed: read
those upstream functions again before updating the record (``python tests/integration/
test_patch_table.py --record``).
"""

import hashlib
import importlib
import inspect
import json
import os
import sys

import pytest

from openrlhf_offpolicy.integration import imports, patches
from openrlhf_offpolicy.integration.patch_table import PATCHES
from openrlhf_offpolicy.integration.settings import OffPolicySettings
from openrlhf_offpolicy.integration.versions import UnsupportedVersion, check_versions, release

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


def test_every_entry_names_an_existing_symbol_and_no_replacement_is_listed_twice():
    # A symbol may carry several entries (they compose in table order), each with its own replacement.
    entries = [(p.symbol, p.make.__qualname__) for p in PATCHES]
    assert len(entries) == len(set(entries))
    for patch in PATCHES:
        assert callable(patch.make) and patch.why, patch.symbol
        upstream_symbol(patch)


@pytest.mark.parametrize("settings", [
    OffPolicySettings(logprobs_topk=3, match_rollout_sampling=True, rollout_top_p=0.9,
                      advantage_estimator="reinforce_max"),
    OffPolicySettings(routing_replay="r3"),
    OffPolicySettings(routing_replay="r2"),
], ids=["topk-truncation-reinforce_max", "routing-r3", "routing-r2"])
def test_undo_restores_every_symbol_including_the_launcher_hooks(monkeypatch, settings):
    from openrlhf_offpolicy.integration import run_state

    monkeypatch.setattr(run_state, "_RUN", object())  # as while launch.run executes
    modules = sorted({p.module for p in PATCHES})
    for name in modules:
        importlib.import_module(name)
    before = {p.symbol: upstream_symbol(p) for p in PATCHES}
    active = {p.symbol for p in PATCHES if p.when(settings)}
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
    from openrlhf_offpolicy.integration import versions as module

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

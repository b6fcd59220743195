"""Upstream's parser read from its source equals the one its module builds when run."""

import runpy
import sys

import pytest

from openrlhf_offpolicy.integration.driver import upstream_source
def _actions(parser):
    return sorted((tuple(a.option_strings), a.dest, a.nargs, getattr(a.type, "__name__", None),
                   tuple(a.choices) if a.choices else None,
                   repr(a.default) if a.dest != "logger.wandb.run_name" else "")
                  for a in parser._actions)


def test_the_source_parser_equals_the_parser_upstreams_module_builds(monkeypatch):
    import argparse

    built = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        built.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", ["train_ppo_ray"])
    with pytest.raises(SystemExit):
        runpy.run_module(upstream_source.UPSTREAM_MODULE, run_name="__main__")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    assert _actions(upstream_source.extend_choices(built[0])) == _actions(upstream_source.upstream_parser())


def test_reading_the_parser_imports_no_upstream_module():
    import subprocess

    code = ("import sys\n"
            "from openrlhf_offpolicy.integration.driver.upstream_source import upstream_flags\n"
            "assert len(upstream_flags()) > 100\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openrlhf', 'ray', 'vllm', 'deepspeed')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_upstream_is_one_line_saying_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openrlhf" else real(name, *a))
    with pytest.raises(upstream_source.UpstreamMissing) as e:
        upstream_source.source_path()
    assert "\n" not in str(e.value) and "pip install openrlhf==0.11.2" in str(e.value) and "make test" in str(e.value)


def test_extra_choices_reach_the_checks_and_the_dry_run(monkeypatch, capsys):
    from helpers import MINIMAL_UPSTREAM_ARGV, dry_run

    argv = [a if a != "group_norm" else "my_estimator" for a in MINIMAL_UPSTREAM_ARGV]
    status, err = dry_run(argv, capsys)
    assert status == 2 and "invalid choice: 'my_estimator'" in err
    monkeypatch.setitem(upstream_source.EXTRA_CHOICES, "--algo.advantage.estimator", ["my_estimator"])
    monkeypatch.setattr(upstream_source, "parser_from_source", upstream_source.parser_from_source.__wrapped__)
    status, out = dry_run(argv, capsys)
    assert status == 0 and out["upstream"]["algo.advantage.estimator"] == "my_estimator"

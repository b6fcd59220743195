"""What upstream's WandbLogger hands wandb.init once patched: nested sections, our resolved settings,
no secret; and the default group / run name a run gets."""

import json
import os
import sys
from types import SimpleNamespace

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV

from openrlhf_offpolicy.integration.driver import launch
from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.wandb_config import config_view

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def resolved_args(extra):
    from openrlhf_offpolicy.cli.train_ppo_ray import parse
    from openrlhf_offpolicy.integration.runtime.upstream_args import given_flags

    _, settings, upstream_argv = parse(MINIMAL_UPSTREAM_ARGV + extra)
    args, _, final = launch.run(upstream_argv, settings, dry_run=True, explicit_flags=given_flags(upstream_argv))
    return args, final


class FakeWandb:
    """Records wandb.init's keyword arguments (upstream's logger calls nothing else that matters here)."""

    def __init__(self):
        self.api = SimpleNamespace(api_key="set")
        self.inits = []

    def init(self, **kwargs):
        self.inits.append(kwargs)

    def define_metric(self, *a, **k):
        pass

    def Table(self, columns):
        return SimpleNamespace(columns=columns, data=[])


def test_upstreams_wandb_logger_gets_nested_sections_and_resolved_settings(monkeypatch):
    args, settings = resolved_args(["--config", "configs/sapo.yaml", "--logger.wandb.key", "secret-abc"])
    from openrlhf.utils.logging_utils import WandbLogger

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    patches.install(settings)
    try:
        WandbLogger(args)
    finally:
        patches.undo()
    [call] = fake.inits
    config = json.loads(json.dumps(call["config"]))  # plain data all the way down
    assert config["actor"]["adam"]["lr"] == args.actor.adam.lr
    assert config["algo"]["advantage"]["estimator"] == "group_norm"
    assert config["offpolicy"]["policy_loss"]["policy_loss_type"] == "sapo"  # the preset's value, filled in
    assert config["offpolicy"]["policy_loss"]["sapo_tau_neg"] == 1.05
    assert config["logger"]["wandb"]["key"] == "<redacted>" and "secret-abc" not in json.dumps(config)
    assert call["group"] == args.logger.wandb.group and call["name"] == args.logger.wandb.run_name


def test_without_the_patch_upstream_would_store_sections_as_objects(monkeypatch):
    args, _ = resolved_args([])
    from openrlhf.utils.logging_utils import WandbLogger

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    patches.undo()
    WandbLogger(args)
    assert not isinstance(fake.inits[0]["config"]["actor"], dict)


def test_the_group_names_method_estimator_lr_and_model_and_run_names_are_unique():
    args, _ = resolved_args(["--algo.advantage.estimator", "reinforce_max", "--algo.kl.init_coef", "0",
                             "--enable_vllm_is_correction", "--vllm_is_correction_type", "reinforce_pro",
                             "--actor.adam.lr", "1e-6"])
    assert args.logger.wandb.group == "ppo-reinforce_pro-reinforce_max-lr=1e-06-Qwen2.5-Math-1.5B"
    other, _ = resolved_args(["--algo.advantage.estimator", "reinforce_baseline", "--enable_vllm_is_correction",
                              "--vllm_is_correction_type", "reinforce_pro", "--actor.adam.lr", "1e-6"])
    assert other.logger.wandb.group != args.logger.wandb.group
    names = {resolved_args([])[0].logger.wandb.run_name for _ in range(3)}
    assert len(names) == 3 and all("_seed42_" in n for n in names)


def test_a_long_group_stays_within_wandbs_limit():
    config = SimpleNamespace()
    args = SimpleNamespace(algo=SimpleNamespace(advantage=SimpleNamespace(estimator="group_norm")),
                           actor=SimpleNamespace(model_name_or_path="org/" + "m" * 200, adam=SimpleNamespace(lr=1e-6)))
    settings = SimpleNamespace(advantage_estimator=None)
    original = launch.method_label
    launch.method_label = lambda _: "ppo-tis"
    try:
        group = launch.run_group(config, args, settings)
    finally:
        launch.method_label = original
    assert len(group) == launch.WANDB_GROUP_MAX and group.startswith("ppo-tis-group_norm-lr=1e-06-mmm")


def secret_bearing_args():
    return SimpleNamespace(
        logger=SimpleNamespace(wandb=SimpleNamespace(key="wandb-SECRET-1", project="p", run_name="r")),
        reward=SimpleNamespace(remote_url=["https://user:pw-SECRET-2@rm.example/score?token=SECRET-3&x=1"]),
        data=SimpleNamespace(input_key="prompt", label_key="label"),
        actor=SimpleNamespace(adam=SimpleNamespace(lr=1e-6)),
    )


def test_the_wandb_config_hides_secret_flags_url_userinfo_and_credential_query_values():
    text = repr(config_view(secret_bearing_args()).__dict__)
    assert "SECRET" not in text
    assert "rm.example/score" in text and "x=1" in text  # only the credentials go


def test_the_wandb_config_keeps_sections_nested_and_ordinary_values_readable():
    view = config_view(secret_bearing_args())
    assert view.data == {"input_key": "prompt", "label_key": "label"}
    assert view.actor["adam"]["lr"] == 1e-6 and view.actor.adam.lr == 1e-6  # dict for wandb, attributes for upstream
    assert view.logger.wandb.project == "p"

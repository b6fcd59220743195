"""reinforce_max through the CLI and through upstream's own advantage computation."""

from types import SimpleNamespace

import pytest
import torch
from helpers import MINIMAL_UPSTREAM_ARGV, dry_run

from openrlhf_offpolicy.advantages import reinforce_max_advantages
from openrlhf_offpolicy.integration.runtime.advantages import make_compute_advantages, translate_estimator
from openrlhf_offpolicy.integration.runtime.patch_table import PATCHES
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings


def with_estimator(argv, value):
    argv = list(argv)
    argv[argv.index("--algo.advantage.estimator") + 1] = value
    return argv


def test_reinforce_max_reaches_upstream_as_rloo_and_the_settings_as_reinforce_max():
    argv, ours = translate_estimator(["--x", "1", "--algo.advantage.estimator", "reinforce_max"])
    assert argv == ["--x", "1", "--algo.advantage.estimator", "rloo"] and ours == "reinforce_max"
    assert translate_estimator(["--algo.advantage.estimator=reinforce_max"]) == (
        ["--algo.advantage.estimator=rloo"], "reinforce_max")
    assert translate_estimator(["--algo.advantage.estimator", "group_norm"])[1] is None


def test_the_cli_accepts_reinforce_max_with_uniform_scale(capsys, monkeypatch):
    argv = with_estimator(MINIMAL_UPSTREAM_ARGV, "reinforce_max") + ["--uniform_scale", "--algo.kl.init_coef", "0"]
    status, out = dry_run(argv, capsys)
    assert status == 0, out
    assert out["upstream"]["algo.advantage.estimator"] == "rloo"
    assert out["offpolicy"]["settings"]["advantage_estimator"] == "reinforce_max"
    assert out["offpolicy"]["settings"]["uniform_scale"] is True


@pytest.mark.parametrize("extra,estimator,message", [
    (["--uniform_scale"], "group_norm", "--uniform_scale applies to"),
    ([], "reinforce_max", "use --algo.kl.use_loss"),  # upstream's default KL coefficient is 0.01
])
def test_impossible_estimator_settings_exit_2(extra, estimator, message, capsys):
    status, err = dry_run(with_estimator(MINIMAL_UPSTREAM_ARGV, estimator) + extra, capsys)
    assert status == 2 and message in err


def test_the_patch_table_replaces_upstreams_advantages_only_for_reinforce_max():
    [entry] = [p for p in PATCHES if p.target == "RemoteExperienceMaker.compute_advantages_and_returns"]
    assert entry.active(OffPolicySettings(advantage_estimator="reinforce_max"))
    assert not entry.active(OffPolicySettings())
    owner, name = entry.owner_and_name()
    assert callable(getattr(owner, name))


def upstream_maker(n):
    args = SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=n, max_new_tokens=16),
        reward=SimpleNamespace(clip_range=(-10, 10), overlong_buffer_len=None, stop_properly_penalty_coef=None),
        algo=SimpleNamespace(advantage=SimpleNamespace(estimator="rloo", gamma=1.0, no_std_norm=False)),
        data=SimpleNamespace(max_len=32),
    )
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    maker = RemoteExperienceMaker.__new__(RemoteExperienceMaker)  # upstream's methods, none of its engines
    maker.strategy, maker.kl_ctl = SimpleNamespace(args=args), SimpleNamespace(value=0.0)
    maker.advantage_estimator = "rloo"
    return maker


def experiences_of(rows, rewards, masks, prompts):
    """One experience per list of sample indices, each with its own (right-trimmed) width."""
    out = []
    for index in rows:
        width = int(max(masks[i].nonzero().max() for i in index)) + 1
        mask = torch.stack([masks[i, :width] for i in index])
        out.append(SimpleNamespace(index=list(index), rewards=rewards[index].clone(), action_mask=mask.bool(),
                                   kl=torch.zeros(mask.shape), values=None, advantages=None, returns=None, info={},
                                   prompts=[prompts[i] for i in index]))
    return out


@pytest.mark.parametrize("uniform_scale", [False, True])
def test_patched_upstream_advantages_equal_the_pure_function_whatever_the_split(uniform_scale):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    n, groups, width = 4, 3, 9
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (n * groups,), generator=g).float()
    rewards[:n] = 1.0  # a flat group
    lengths = torch.randint(1, width + 1, (n * groups,), generator=g)
    masks = (torch.arange(width) < lengths.unsqueeze(1)).float()
    prompts = [f"prompt {i // n}" for i in range(n * groups)]
    rows = [[5, 0, 11], [3, 7], [1, 2, 4, 6, 8, 9, 10]]  # dynamic batching: uneven, shuffled
    settings = OffPolicySettings(advantage_estimator="reinforce_max", uniform_scale=uniform_scale)
    patched = make_compute_advantages(RemoteExperienceMaker.compute_advantages_and_returns, settings)
    experiences = patched(upstream_maker(n), experiences_of(rows, rewards, masks, prompts))
    expected = reinforce_max_advantages(rewards, masks, n, uniform_scale)
    for e in experiences:
        assert torch.allclose(e.advantages, expected[e.index, : e.action_mask.shape[1]], atol=1e-6)
        assert "return" in e.info  # upstream's own path ran
    if uniform_scale:
        assert expected[:n].sum() > 0


def test_a_group_with_two_prompts_is_refused():
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    n = 2
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    masks = torch.ones(4, 3)
    patched = make_compute_advantages(RemoteExperienceMaker.compute_advantages_and_returns,
                                      OffPolicySettings(advantage_estimator="reinforce_max"))
    with pytest.raises(ValueError, match="group 0 holds samples of 2 different prompts"):
        patched(upstream_maker(n), experiences_of([[0, 1, 2, 3]], rewards, masks, ["a", "b", "b", "b"]))

"""Upstream's real ``ActorPPOTrainer`` builds our loss and calls it from its real ``training_step``.

What runs for real on CPU: upstream's argument parsing (through our CLI's dry run), our patches,
``ActorPPOTrainer.__init__`` (loss construction, replay buffer), upstream's ``Actor`` wrapper
loading a tiny random Qwen2 model from disk and computing action log-probs, and the whole of
``training_step``: ``get_loss_batch_info`` on a one-process gloo group, the policy loss with the
experience's real fields, the KL-loss branch, the metrics merge into the returned status.

What cannot run on CPU and is replaced: the DeepSpeed engine (upstream's ``DeepspeedStrategy``
builds a CUDA device mesh in ``setup_distributed``), so a small strategy object does
``loss.backward()`` / ``AdamW.step()`` where DeepSpeed would; ``torch.cuda.synchronize`` (in
``torch_dist_barrier_and_cuda_sync``) is a no-op and ``torch.cuda.current_device`` returns 0 (the
replay buffer only records it as its target device); vLLM engines are absent (``vllm_engines=None``),
so the rollout log-probs are the recomputed ones plus noise.
"""

import os

import torch
import pytest
from helpers import MINIMAL_UPSTREAM_ARGV, CPUStrategy, micro_step_metrics

from openrlhf_offpolicy.cli.train_ppo_ray import parse
from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.driver.launch import run
from openrlhf_offpolicy.integration.runtime.settings import ENV_VAR
from openrlhf_offpolicy.integration.runtime.upstream_args import given_flags
from openrlhf_offpolicy.models import PolicyLoss

CORRECTION_METRICS = {"is/weight_mean", "is/weight_max", "is/ess", "is/token_masked_frac", "is/seq_masked_frac",
                "mismatch/k1", "mismatch/k3", "mismatch/max_k2", "trm/accept_rate", "sapo/gate_mean"}


def build_trainer(cli_argv, model_dir, monkeypatch):
    from openrlhf.models import Actor
    from openrlhf.trainer.ray import ppo_actor

    # run() exports the settings for Ray workers; monkeypatch removes them again when the test ends,
    # whether it passes or fails, so no later test sees them.
    monkeypatch.delenv(ENV_VAR, raising=False)
    ours, settings, upstream_argv = parse(cli_argv)
    args, config, settings = run(upstream_argv, settings, dry_run=True, explicit_flags=given_flags(upstream_argv))
    patches.install(settings)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    actor = Actor(model_dir, attn_implementation="eager", param_dtype="bf16", temperature=args.rollout.temperature)
    optim = torch.optim.AdamW(actor.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1.0)
    trainer = ppo_actor.ActorPPOTrainer(CPUStrategy(args), actor, ema_model=None, actor_optim=optim,
                                        actor_scheduler=scheduler, micro_train_batch_size=2, vllm_engines=None)
    return trainer, actor, config


def make_experience(actor, batch=3, prompt_len=4, resp_len=6, seed=0):
    from openrlhf.trainer.ppo_utils.experience import Experience

    g = torch.Generator().manual_seed(seed)
    total = prompt_len + resp_len
    sequences = torch.randint(0, 64, (batch, total), generator=g)
    attention_mask = torch.ones(batch, total, dtype=torch.long)
    attention_mask[0, :1] = 0  # left padding of the first prompt
    action_mask = torch.ones(batch, resp_len, dtype=torch.bool)
    action_mask[1, -2:] = False  # a shorter response
    with torch.no_grad():
        old = actor(sequences, action_mask, attention_mask=attention_mask).float()
    rollout = old + 0.05 * torch.randn(old.shape, generator=g)
    return Experience(
        sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
        action_log_probs=old, rollout_log_probs=rollout, base_action_log_probs=old.clone(),
        advantages=torch.tensor([[1.0], [-0.5], [0.7]]).expand(batch, resp_len).clone(),
        info={"reward": torch.tensor([1.0, 0.0, 1.0])},
    )


def test_training_step_calls_our_loss_with_the_real_experience_and_logs_spec_metrics(gloo, tiny_model_dir,
                                                                                    monkeypatch):
    cli = MINIMAL_UPSTREAM_ARGV + ["--policy_loss_type", "sapo", "--enable_vllm_is_correction",
                                   "--vllm_is_correction_type", "trm", "--trm_max_delta", "0.02",
                                   "--algo.kl.use_loss",
                                   "--algo.kl.estimator", "k3"]
    try:
        trainer, actor, config = build_trainer(cli, tiny_model_dir, monkeypatch)
        loss_fn = trainer.actor_loss_fn
        assert isinstance(loss_fn, PolicyLoss)
        assert loss_fn.config.policy_loss_type == "sapo" and loss_fn.config.correction == "trm"
        assert loss_fn.config.param("trm_max_delta") == 0.02 and loss_fn.config.clip_eps_high == 0.2

        calls = []
        original_forward = type(loss_fn).forward

        def spy(self, *args, **kwargs):
            calls.append((args, kwargs))
            return original_forward(self, *args, **kwargs)

        monkeypatch.setattr(type(loss_fn), "forward", spy)
        experience = make_experience(actor)
        before = [p.detach().clone() for p in actor.parameters()]
        status = trainer.training_step(experience, kl_ctl=0.01, step=0)
    finally:
        patches.undo()

    (log_probs, old, advantages), kwargs = calls[0]
    assert log_probs.requires_grad and log_probs.shape == experience.action_mask.shape
    assert old is experience.action_log_probs and advantages is experience.advantages
    assert kwargs["rollout_log_probs"] is experience.rollout_log_probs
    assert kwargs["action_mask"] is experience.action_mask
    assert kwargs["dp_size"] == 1 and float(kwargs["batch_num_tokens"]) == float(experience.action_mask.sum())

    metrics = status["metrics"]
    logged = micro_step_metrics(trainer, status)
    assert CORRECTION_METRICS <= set(logged)
    for name in CORRECTION_METRICS:
        assert logged[name] == pytest.approx(loss_fn.metrics[name].item(), rel=1e-5, abs=1e-6)
    assert {"policy_loss", "ppo_clip_ratio", "ppo_kl", "vllm_kl", "is_filter_ratio", "kl"} <= set(metrics)
    assert torch.isfinite(metrics["policy_loss"]) and status["num_action_tokens"] == 16.0
    after = list(actor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the optimizer step must change the actor"


def test_without_our_flags_the_trainer_builds_our_loss_with_upstream_semantics(gloo, tiny_model_dir, monkeypatch):
    cli = MINIMAL_UPSTREAM_ARGV + ["--algo.advantage.is_correction_level", "token",
                                   "--algo.advantage.is_correction_mode", "clip"]
    try:
        trainer, actor, _ = build_trainer(cli, tiny_model_dir, monkeypatch)
        assert isinstance(trainer.actor_loss_fn, PolicyLoss)
        assert trainer.actor_loss_fn.config.correction == "tis"
        status = trainer.training_step(make_experience(actor, seed=1), kl_ctl=0.0, step=0)
    finally:
        patches.undo()
    assert "is/ess" in micro_step_metrics(trainer, status) and "vllm_kl" in status["metrics"]
    # The settings travel in Ray's runtime env and on args, never in this process's environment (a leak
    # would make every later process of the session patch itself).
    assert ENV_VAR not in os.environ, "run() leaked the settings into os.environ"

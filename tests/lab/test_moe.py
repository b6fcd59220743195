"""The MoE routing lab: its engine's router noise flips experts, and R3 makes pi_old equal pi_roll."""

import torch

from openrlhf_offpolicy.lab.moe import Engine, MoELabConfig, run_method, token_log_probs, tiny_moe_policy
from openrlhf_offpolicy.models.routing_replay import RoutingReplay

CONFIG = MoELabConfig(prompt_len=3, warmup_steps=0, steps=2, prompts_per_step=2, samples_per_prompt=2,
                      evaluate_every=1, eval_prompts=4, seeds=[0], hidden=32, router_noise=1.0)


def test_replaying_the_engines_routing_reproduces_its_sampling_log_probs_and_own_routing_does_not():
    engine = Engine(CONFIG, router_noise=1.0, seed=0)
    trainer = tiny_moe_policy(CONFIG)
    trainer.load_state_dict(engine.model.state_dict())
    task = CONFIG.task_obj()
    prompts = task.prompts(4, torch.Generator().manual_seed(0))
    sequences, rollout_lp, routed = engine.generate(prompts, 2)
    first = task.prompt_len + 1
    controller = RoutingReplay.attach(trainer)
    with torch.no_grad():
        own = token_log_probs(trainer, sequences, first)
        with controller.replay(routed):
            replayed = token_log_probs(trainer, sequences, first)
    assert torch.allclose(replayed, rollout_lp, atol=1e-5)
    assert (own - rollout_lp).abs().max() > 1e-3
    assert controller.counts().flipped_pairs > 0


def test_a_short_r3_run_logs_reward_flip_rate_and_zero_mismatch():
    warm = tiny_moe_policy(CONFIG).state_dict()
    history = run_method("r3", 0, CONFIG, warm)
    assert len(history) == 2 and 0 < history[0]["routing/flip_rate"] <= 1
    assert abs(history[0]["mismatch/k3"]) < 1e-6 and "eval_reward" in history[-1]

"""The lab's engine and trainer without Ray: pi_roll is what the engine sampled from."""

import torch

from openrlhf_offpolicy.lab.engines import (
    Mismatch,
    RolloutEngine,
    Trainer,
    group_advantages,
    response_log_probs,
    supervised_warmup,
)
from openrlhf_offpolicy.lab.model import TinyConfig, TinyTransformer
from openrlhf_offpolicy.lab.task import DigitTask

TASK = DigitTask(prompt_len=4, kind="cumsum")
CONFIG = TinyConfig(max_len=TASK.seq_len)


def engine_and_trainer(mismatch, loss_kwargs=None):
    warm = supervised_warmup(CONFIG, TASK, steps=5)
    trainer = Trainer(CONFIG, TASK, loss_kwargs or {}, init_state=warm)
    engine = RolloutEngine(CONFIG, TASK, mismatch, seed=3)
    engine.load_weights(trainer.weights(), 0)
    prompts = TASK.prompts(6, torch.Generator().manual_seed(0))
    return engine, trainer, engine.generate(prompts, 4)


def test_tasks_compute_their_answers_and_graded_rewards():
    prompts = torch.tensor([[3, 1, 2, 9, 10]])
    assert DigitTask(4, kind="reverse").answers(prompts).tolist() == [[9, 2, 1, 3]]
    assert DigitTask(4, kind="sort").answers(prompts).tolist() == [[1, 2, 3, 9]]
    assert DigitTask(4, kind="cumsum").answers(prompts).tolist() == [[3, 4, 6, 5]]
    task = DigitTask(4, kind="cumsum")
    assert task.rewards(prompts, torch.tensor([[3, 4, 0, 5]])).item() == 0.75
    assert DigitTask(4, "exact", "cumsum").rewards(prompts, torch.tensor([[3, 4, 0, 5]])).item() == 0.0


def test_without_mismatch_the_engine_log_probs_equal_the_trainers_recompute():
    engine, trainer, batch = engine_and_trainer(Mismatch())
    recomputed = response_log_probs(trainer.model, batch["sequences"], TASK.prompt_len + 1)
    assert torch.allclose(batch["rollout_log_probs"], recomputed, atol=1e-5)
    metrics = trainer.train_step(batch, 4)
    assert abs(metrics["mismatch/k3"]) < 1e-8 and metrics["staleness"] == 0


def test_each_mismatch_kind_makes_pi_roll_differ_from_pi_old():
    for mismatch in (Mismatch(precision="bf16"), Mismatch(noise_prob=0.5, noise_std=2.0)):
        engine, trainer, batch = engine_and_trainer(mismatch)
        recomputed = response_log_probs(trainer.model, batch["sequences"], TASK.prompt_len + 1)
        assert not torch.allclose(batch["rollout_log_probs"], recomputed, atol=1e-5), mismatch
        assert trainer.train_step(batch, 4)["mismatch/k3"] > 0


def test_a_training_step_updates_the_policy_and_reports_the_spec_metrics():
    engine, trainer, batch = engine_and_trainer(
        Mismatch(noise_prob=0.3, noise_std=2.0),
        dict(enable_vllm_is_correction=True, vllm_is_correction_type="icepop"))
    before = trainer.weights()
    metrics = trainer.train_step(batch, 4)
    after = trainer.weights()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for key in ("is/ess", "is/token_masked_frac", "mismatch/k1", "mismatch/k3", "grad_norm", "reward"):
        assert key in metrics
    assert 0.0 <= trainer.evaluate(TASK.prompts(8, torch.Generator().manual_seed(1)))["eval_reward"] <= 1.0


def test_group_advantages_are_zero_mean_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.9])
    adv = group_advantages(rewards, 4).view(2, 4)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(2), atol=1e-6)


def test_the_tiny_transformer_is_causal():
    model = TinyTransformer(CONFIG).eval()
    tokens = torch.randint(0, 10, (1, 8))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 10
    assert torch.allclose(model(tokens)[0, :-1], model(changed)[0, :-1], atol=1e-6)

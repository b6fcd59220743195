"""Random test inputs shared by the test modules."""

from __future__ import annotations

import torch


def ragged_mask(batch: int, length: int, generator: torch.Generator, min_len: int = 1) -> torch.Tensor:
    """Left-aligned action masks of random lengths in [min_len, length]."""
    lengths = torch.randint(min_len, length + 1, (batch,), generator=generator)
    return (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float64)


def random_inputs(
    batch: int = 5,
    length: int = 9,
    seed: int = 0,
    policy_scale: float = 0.2,
    mismatch_scale: float = 0.3,
    dtype=torch.float64,
    min_len: int = 1,
    per_sequence_advantage: bool = False,
):
    """log_probs (requires grad), old, rollout, advantages and a ragged mask, all ``[B, T]``.

    Log-probs lie in (-4, -0.05) so binary divergences and ratios take varied, finite values.
    ``mismatch_scale=(lo, hi)`` grades the rollout noise linearly over the rows, so gates see
    sequences from nearly on-policy to far off-policy in one batch.
    """
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3.9 - 0.05
    log_probs = (old + policy_scale * torch.randn(batch, length, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    if isinstance(mismatch_scale, tuple):
        mismatch_scale = torch.linspace(*mismatch_scale, batch, dtype=torch.float64).unsqueeze(1)
    rollout = (old + mismatch_scale * torch.randn(batch, length, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    if per_sequence_advantage:
        advantages = torch.randn(batch, 1, generator=g, dtype=torch.float64).expand(batch, length).clone()
    else:
        advantages = torch.randn(batch, length, generator=g, dtype=torch.float64)
    mask = ragged_mask(batch, length, g, min_len=min_len)
    return {
        "log_probs": log_probs.to(dtype).requires_grad_(),
        "old_log_probs": old.to(dtype),
        "rollout_log_probs": rollout.to(dtype),
        "advantages": advantages.to(dtype),
        "action_mask": mask.to(dtype),
    }


def correction_output(name: str, inputs: dict, threshold=(0.5, 5.0), **params):
    """Run the registered correction ``name`` on ``inputs``; returns (Correction, PolicyBatch)."""
    from openrlhf_offpolicy.corrections import CORRECTIONS, resolve_config
    from openrlhf_offpolicy.corrections.batch import make_policy_batch

    cfg = resolve_config(
        enable_vllm_is_correction=True, vllm_is_correction_type=name, vllm_is_truncated_threshold=threshold, **params
    )
    batch, _, _ = make_policy_batch(
        inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"], inputs["action_mask"],
        inputs["rollout_log_probs"],
    )
    return CORRECTIONS.get(cfg.correction).fn(batch, cfg), batch


def surrogate_output(loss_type: str, inputs: dict, **kwargs):
    """Run the registered policy loss on ``inputs``; returns (Surrogate, PolicyBatch)."""
    from openrlhf_offpolicy.corrections import POLICY_LOSSES, resolve_config
    from openrlhf_offpolicy.corrections.batch import make_policy_batch

    cfg = resolve_config(policy_loss_type=loss_type, **kwargs)
    batch, _, _ = make_policy_batch(
        inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"], inputs["action_mask"],
        inputs["rollout_log_probs"],
    )
    return POLICY_LOSSES.get(cfg.policy_loss_type).fn(batch, cfg), batch


def assert_close_lists(actual, expected, atol=1e-9, rtol=1e-7):
    actual = actual.tolist() if hasattr(actual, "tolist") else actual
    expected = expected.tolist() if hasattr(expected, "tolist") else expected
    for b, (ra, re) in enumerate(zip(actual, expected)):
        for t, (a, e) in enumerate(zip(ra, re)):
            assert abs(a - e) <= atol + rtol * abs(e), f"[{b}][{t}]: got {a}, expected {e}"


# Upstream flags that make a minimal valid train_ppo_ray command line (no model is loaded by a dry run).
MINIMAL_UPSTREAM_ARGV = [
    "--actor.model_name_or_path", "Qwen/Qwen2.5-Math-1.5B",
    "--reward.remote_url", "examples/scripts/reward_math.py",
    "--algo.advantage.estimator", "group_norm",
    "--rollout.n_samples_per_prompt", "4",
    "--vllm.num_engines", "2",
]


def dry_run(argv, capsys):
    """Run the CLI in-process with ``--dry_run``; returns (exit status, resolved dict or stderr)."""
    import json

    from openrlhf_offpolicy.cli.train_ppo_ray import main

    status = main([*argv, "--dry_run"])
    out, err = capsys.readouterr()
    if status != 0:
        return status, err
    return status, json.loads(out[out.index("{\n"):])


# --------------------------------------------------------------------------- upstream trainer on CPU

class CPUStrategy:
    """Stands in for DeepspeedStrategy where it needs CUDA (see the module docstring)."""

    ring_attn_group = None
    accumulated_gradient = 1

    def __init__(self, args):
        self.args = args
        self.grad_norm = 0.0

    def backward(self, loss, model, optimizer):
        loss.backward()

    def optimizer_step(self, optimizer, model, scheduler, name="model"):
        params = [p for p in model.parameters() if p.grad is not None]
        self.grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=1e9).item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    def get_grad_norm(self, model):
        return self.grad_norm

    def is_rank_0(self):
        return True

    def print(self, *msg):
        print(*msg)


def micro_step_metrics(trainer, status) -> dict:
    """The logged metrics of a training step made of this one micro-batch (``training_step`` status)."""
    from openrlhf_offpolicy.corrections.metrics import HIDDEN_PREFIX
    from openrlhf_offpolicy.integration.runtime.wrappers import step_metrics

    reduced = {k: float(v.float().mean()) for k, v in status["metrics"].items() if k.startswith(HIDDEN_PREFIX)}
    metrics = step_metrics(trainer)
    return metrics.finalize(reduced, metrics.local_maxima())


HEAVY_MODULES = ("torch", "ray", "vllm", "deepspeed", "transformers", "openrlhf")
_CLI_PROBE = (
    "import json, os, sys\n"
    "from openrlhf_offpolicy.cli.train_ppo_ray import main\n"
    "status = main(sys.argv[1:])\n"
    "heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(os.environ['PROBE_HEAVY'])))\n"
    "open(os.environ['PROBE_OUT'], 'w').write(json.dumps(heavy))\n"
    "sys.exit(status)\n"
)


def cli_process(argv, tmp_path, cwd, timeout=120):
    """``train_ppo_ray`` in a fresh process: (completed process, the heavy modules it had imported at exit).

    What the process imports is the deterministic form of "refused before anything heavy starts":
    a wall-clock bound would fail on a loaded machine without a bug.
    """
    import json
    import os
    import subprocess
    import sys

    out = os.path.join(str(tmp_path), "heavy.json")
    env = {**os.environ, "PROBE_OUT": out, "PROBE_HEAVY": json.dumps(HEAVY_MODULES)}
    result = subprocess.run([sys.executable, "-c", _CLI_PROBE, *argv], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=env)
    with open(out) as f:
        return result, json.load(f)


def resolved(settings, **upstream_kwargs):
    """``settings`` carrying the configuration the driver resolves before Ray starts (``driver.checks``),
    for a trainer that builds its ``PolicyLoss`` with ``upstream_kwargs`` (what a test's trainer passes)."""
    from openrlhf_offpolicy.corrections import resolve_config

    if settings.policy_loss_type is not None:
        upstream_kwargs["policy_loss_type"] = settings.policy_loss_type
    return settings.with_config(resolve_config(**upstream_kwargs, **settings.loss_kwargs), upstream_kwargs)

"""The two sides of the mismatch lab, mirroring OpenRLHF's vLLM / DeepSpeed split.

``RolloutEngine`` samples responses and reports the log-prob of every sampled token under the
distribution it actually sampled from (pi_roll), like vLLM's processed log-probs. It disagrees
with the trainer in controllable ways (``Mismatch``): a bfloat16 forward, logit noise on a random
subset of tokens (a stand-in for MoE routing flips), and weights that lag the trainer's.
``Trainer`` recomputes pi_old in float32, builds GRPO advantages and updates the policy with the
project's real ``PolicyLoss``. Both are plain classes; ``train.py`` runs them as Ray actors.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional

import torch

from ..integration.runtime.staleness import SampleVersion, staleness_stats
from ..models import PolicyLoss
from .model import TinyConfig, TinyTransformer
from .task import DigitTask


ENGINE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Mismatch:
    """How the rollout engine departs from the trainer."""

    precision: str = "fp32"  # "bf16" / "fp16": the engine runs the model in bfloat16 / float16
    noise_prob: float = 0.0  # probability that a generated token's logits are perturbed
    noise_std: float = 0.0  # std of the Gaussian noise added to those logits
    staleness: int = 0  # the engine's weights lag the trainer's by this many updates

    def describe(self) -> str:
        parts = []
        if self.precision != "fp32":
            parts.append(f"{self.precision} rollout")
        if self.noise_prob > 0 and self.noise_std > 0:
            parts.append(f"logit noise p={self.noise_prob} std={self.noise_std}")
        if self.staleness:
            parts.append(f"weights {self.staleness} updates stale")
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict:
        return asdict(self)


def response_log_probs(model: torch.nn.Module, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """log pi(r_j | prefix) for the response tokens after ``prompt_len`` prompt tokens, ``[N, k]``."""
    logits = model(sequences[:, :-1]).float()[:, prompt_len - 1:]
    targets = sequences[:, prompt_len:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class RolloutEngine:
    def __init__(self, config: TinyConfig, task: DigitTask, mismatch: Mismatch, seed: int = 0) -> None:
        self.task = task
        self.mismatch = mismatch
        self.model = TinyTransformer(config).eval().to(ENGINE_DTYPES[mismatch.precision])
        self.generator = torch.Generator().manual_seed(seed)
        self.version = -1

    def load_weights(self, state: Dict[str, torch.Tensor], version: int) -> None:
        if version != self.version:
            self.model.load_state_dict(state)  # load_state_dict casts to the engine's dtype
            self.version = version

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, n_samples: int) -> Dict[str, torch.Tensor]:
        """``n_samples`` responses per prompt (grouped), their pi_roll log-probs and rewards."""
        sequences = prompts.repeat_interleave(n_samples, dim=0)
        log_probs: List[torch.Tensor] = []
        for _ in range(self.task.prompt_len):
            logits = self.model(sequences)[:, -1].float()
            if self.mismatch.noise_prob > 0 and self.mismatch.noise_std > 0:
                hit = torch.rand(logits.shape[0], 1, generator=self.generator) < self.mismatch.noise_prob
                noise = torch.randn(logits.shape, generator=self.generator) * self.mismatch.noise_std
                logits = logits + hit * noise
            dist = torch.log_softmax(logits, dim=-1)
            token = torch.multinomial(dist.exp(), 1, generator=self.generator)
            log_probs.append(dist.gather(-1, token).squeeze(-1))
            sequences = torch.cat([sequences, token], dim=1)
        responses = sequences[:, prompts.shape[1]:]
        return {
            "sequences": sequences,
            "rollout_log_probs": torch.stack(log_probs, dim=1),
            "rewards": self.task.rewards(prompts.repeat_interleave(n_samples, dim=0), responses),
            "version": torch.tensor(self.version),
        }


def group_advantages(rewards: torch.Tensor, n_samples: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (r - mean_group) / (std_group + eps), one value per sequence."""
    grouped = rewards.view(-1, n_samples)
    normed = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + eps)
    return normed.reshape(-1)


class Trainer:
    def __init__(self, config: TinyConfig, task: DigitTask, loss_kwargs: dict, lr: float = 1e-3,
                 max_grad_norm: float = 1.0, micro_batches: int = 1, seed: int = 0,
                 init_state: Optional[Dict[str, torch.Tensor]] = None) -> None:
        torch.manual_seed(seed)
        self.task = task
        self.model = TinyTransformer(config)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.loss_fn = PolicyLoss(**loss_kwargs)
        self.max_grad_norm = max_grad_norm
        self.micro_batches = micro_batches
        self.updates = 0

    def weights(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def train_step(self, batch: Dict[str, torch.Tensor], n_samples: int) -> Dict[str, float]:
        """One optimizer step on a rollout batch; returns the loss's metrics and training stats.

        The engine generated the batch from weights of version ``batch["version"]`` (updates behind
        them); the trainer is at version ``self.updates``: the ``staleness/*`` metrics are those of
        the OpenRLHF integration (``integration/runtime/staleness.py``), one version for the whole batch."""
        versions = [SampleVersion(int(batch["version"]), int(batch["version"]))] * batch["sequences"].shape[0]
        staleness = staleness_stats(self.updates, versions, [True] * len(versions))
        prompt_len = self.task.prompt_len + 1
        sequences = batch["sequences"]
        with torch.no_grad():
            old_log_probs = response_log_probs(self.model, sequences, prompt_len)
        advantages = group_advantages(batch["rewards"], n_samples).unsqueeze(1).expand_as(old_log_probs)
        mask = torch.ones_like(old_log_probs)
        norm = {"batch_num_tokens": mask.sum(), "global_batch_size": float(mask.shape[0])}

        self.optimizer.zero_grad()
        sums: Dict[str, float] = {}
        for idx in torch.arange(sequences.shape[0]).chunk(self.micro_batches):
            log_probs = response_log_probs(self.model, sequences[idx], prompt_len)
            loss, clip_ratio, ppo_kl, vllm_kl, filtered = self.loss_fn(
                log_probs, old_log_probs[idx], advantages[idx], action_mask=mask[idx],
                rollout_log_probs=batch["rollout_log_probs"][idx], **norm)
            loss.backward()
            stats = {"policy_loss": loss, "ppo_clip_ratio": clip_ratio, **self.loss_fn.metrics}
            for key, value in stats.items():
                # per-sequence metrics are [B] vectors: their mean is the micro-batch's value
                sums[key] = sums.get(key, 0.0) + float(value.detach().float().mean()) / self.micro_batches
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        sums.update(grad_norm=float(grad_norm), reward=float(batch["rewards"].mean()),
                    staleness=staleness["staleness/mean"], **staleness)
        return sums

    @torch.no_grad()
    def evaluate(self, prompts: torch.Tensor) -> Dict[str, float]:
        """Greedy decoding with the trainer's own float32 policy: the policy that is being learned."""
        sequences = prompts
        for _ in range(self.task.prompt_len):
            token = self.model(sequences)[:, -1].argmax(dim=-1, keepdim=True)
            sequences = torch.cat([sequences, token], dim=1)
        responses = sequences[:, prompts.shape[1]:]
        graded = replace(self.task, reward="graded").rewards(prompts, responses)
        exact = replace(self.task, reward="exact").rewards(prompts, responses)
        return {"eval_reward": float(graded.mean()), "eval_exact": float(exact.mean())}


def supervised_warmup(config: TinyConfig, task: DigitTask, steps: int, batch_size: int = 128,
                      lr: float = 3e-3, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A short supervised warm-up on correct responses so RL starts from a partly trained policy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = TinyTransformer(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    prompt_len = task.prompt_len + 1
    for _ in range(steps):
        sequences = task.full_sequences(task.prompts(batch_size, generator))
        loss = -response_log_probs(model, sequences, prompt_len).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return copy.deepcopy(model.state_dict())

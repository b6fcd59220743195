"""Verifiable synthetic tasks on strings of digits (``DigitTask``).

Sequence layout: ``d_1 .. d_k SEP r_1 .. r_k`` with digits 0..9 and SEP = 10. The correct response
is the prompt reversed (``kind="reverse"``, easy), sorted (``"sort"``) or its running sum mod 10
(``"cumsum"``, hardest). The reward is graded: the fraction of response positions that are right
(``reward="exact"`` gives 1 only for a fully correct response).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEP = 10
NUM_DIGITS = 10


@dataclass(frozen=True)
class DigitTask:
    prompt_len: int = 6
    reward: str = "graded"  # or "exact"
    kind: str = "reverse"  # or "sort", "cumsum"

    @property
    def seq_len(self) -> int:
        return 2 * self.prompt_len + 1

    def prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, prompt_len + 1]``: random digits followed by SEP."""
        digits = torch.randint(0, NUM_DIGITS, (n, self.prompt_len), generator=generator)
        return torch.cat([digits, torch.full((n, 1), SEP, dtype=torch.long)], dim=1)

    def answers(self, prompts: torch.Tensor) -> torch.Tensor:
        digits = prompts[:, : self.prompt_len]
        if self.kind == "sort":
            return digits.sort(dim=1).values
        if self.kind == "cumsum":
            return digits.cumsum(dim=1) % NUM_DIGITS
        return digits.flip(dims=[1])

    def rewards(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        correct = (responses == self.answers(prompts)).float()
        if self.reward == "exact":
            return correct.all(dim=-1).float()
        return correct.mean(dim=-1)

    def full_sequences(self, prompts: torch.Tensor) -> torch.Tensor:
        """Prompt followed by the correct response (supervised warm-up data)."""
        return torch.cat([prompts, self.answers(prompts)], dim=1)

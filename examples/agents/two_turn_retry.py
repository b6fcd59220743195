"""A two-turn agent for upstream OpenRLHF's ``MultiTurnAgentExecutor`` (``--train.agent_func_path``).

Turn 1: the model answers the prompt. The environment replies "Once more: ". Turn 2: the model
answers again, and the episode ends. The reward is how close the last answer's characters are to
the label (``1 - |ord(c) - ord(label)| / 94``, averaged; 0 for an empty answer), given at the end.

Every episode has two action segments, one per turn, separated by the environment's tokens, so it
exercises the per-turn corrections: ``--vllm_is_correction_type segment-tis`` / ``segment-mis``
weight each turn by its own geometric-mean ratio (ROLL's segment-level IS), and the metrics
``mismatch/k3_turn1`` / ``k3_turn2`` split the mismatch by turn.

    python -m openrlhf_offpolicy.cli.train_ppo_ray --actor.model_name_or_path Qwen/Qwen2.5-0.5B \
        --train.agent_func_path examples/agents/two_turn_retry.py \
        --enable_vllm_is_correction --vllm_is_correction_type segment-tis --smoke_test 2
"""

import torch
from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor

TURNS = 2
FEEDBACK = "\nOnce more: "


def closeness(response: str, label: str) -> float:
    """Mean over the response's characters of 1 - |ord(c) - ord(label)| / 94, clamped to [0, 1]."""
    if not response or len(label) != 1:
        return 0.0
    mean = sum(1 - abs(ord(c) - ord(label)) / 94 for c in response) / len(response)
    return min(max(mean, 0.0), 1.0)


class AgentInstance(AgentInstanceBase):
    def __init__(self, *args, **kwargs):
        self.turn = 0

    async def reset(self, states: dict, **kwargs):
        return {"observation": states["observation"]}

    async def step(self, states: dict, **kwargs):
        self.turn += 1
        done = self.turn >= TURNS
        reward = closeness(states["action_text"], states["label"] or "") if done else 0.0
        return {
            "rewards": torch.tensor(reward),
            "scores": torch.tensor(reward),
            "environment_feedback": "" if done else FEEDBACK,
            "done": done,
            "sampling_params": states.get("sampling_params"),
            "extra_logs": {},
        }


class AgentExecutor(MultiTurnAgentExecutor):
    def __init__(self):
        super().__init__(AgentInstance)

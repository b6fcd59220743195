"""``--algo.advantage.estimator reinforce_max`` (with ``--uniform_scale``) on upstream OpenRLHF 0.11.2.

Upstream's parser does not know ``reinforce_max``: the CLI hands upstream ``rloo`` instead and
records the estimator in the settings (``translate_estimator``). On every process that builds
experiences, ``RemoteExperienceMaker.compute_advantages_and_returns`` is wrapped (patch table):
upstream runs its own ``rloo`` path (length penalties, returns, logged info), then the advantages
are replaced by ``openrlhf_offpolicy.advantages.reinforce_max_advantages`` of the same rewards.
Groups are reassembled by each sample's ``index`` (upstream's own order: prompt k owns indices
``k n .. k n + n - 1``), so the split into experiences (dynamic batching, packing) does not
matter, and each group is checked to hold one prompt.

Upstream folds a KL penalty into the per-token reward when ``--algo.kl.init_coef > 0`` without
``--algo.kl.use_loss``; reinforce_max works on the sequence rewards, so that combination is
refused at launch rather than silently dropping the penalty.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

ESTIMATOR_FLAG = "--algo.advantage.estimator"
REINFORCE_MAX = "reinforce_max"
UPSTREAM_STAND_IN = "rloo"  # upstream's estimator whose path we reuse (RLOO baseline, no whitening)


def translate_estimator(upstream_argv: Sequence[str]) -> Tuple[List[str], Optional[str]]:
    """(argv for upstream's parser, our estimator or None): ``reinforce_max`` becomes ``rloo``."""
    out, ours = [], None
    tokens = list(upstream_argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == ESTIMATOR_FLAG and i + 1 < len(tokens) and tokens[i + 1] == REINFORCE_MAX:
            out += [ESTIMATOR_FLAG, UPSTREAM_STAND_IN]
            ours = REINFORCE_MAX
            i += 2
            continue
        if token == f"{ESTIMATOR_FLAG}={REINFORCE_MAX}":
            out.append(f"{ESTIMATOR_FLAG}={UPSTREAM_STAND_IN}")
            ours = REINFORCE_MAX
        else:
            out.append(token)
        i += 1
    return out, ours


def check_estimator(settings, args) -> None:
    """ValueError (one line) for an impossible estimator setting."""
    if settings.uniform_scale and settings.advantage_estimator != REINFORCE_MAX:
        raise ValueError("--uniform_scale applies to --algo.advantage.estimator reinforce_max only")
    if settings.advantage_estimator != REINFORCE_MAX:
        return
    if args.rollout.n_samples_per_prompt < 2:
        raise ValueError("reinforce_max needs --rollout.n_samples_per_prompt >= 2 (it works within prompt groups)")
    if args.algo.kl.init_coef > 0 and not args.algo.kl.use_loss:
        raise ValueError(
            "reinforce_max scales sequence rewards and would drop the KL penalty upstream adds to the token rewards; "
            "use --algo.kl.use_loss or --algo.kl.init_coef 0"
        )


def group_rewards_and_masks(experiences, group_size: int):
    """Rewards ``[B]`` and right-padded action masks ``[B, T]`` in upstream's sample order."""
    import torch

    index = [i for e in experiences for i in e.index]
    total = len(index)
    if sorted(index) != list(range(total)) or total % group_size:
        raise ValueError(f"reinforce_max: sample indices do not form whole groups of {group_size}")
    prompts = [None] * total
    for e in experiences:
        for j, i in enumerate(e.index):
            prompts[i] = e.prompts[j] if len(getattr(e, "prompts", ()) or ()) == len(e.index) else None
    for k in range(total // group_size):
        group = {p for p in prompts[k * group_size:(k + 1) * group_size] if p is not None}
        if len(group) > 1:
            raise ValueError(f"reinforce_max: group {k} holds samples of {len(group)} different prompts")
    width = max(e.action_mask.shape[1] for e in experiences)
    rewards = torch.zeros(total, dtype=torch.float32)
    masks = torch.zeros(total, width, dtype=torch.float32)
    for e in experiences:
        rows = torch.as_tensor(e.index, dtype=torch.long)
        rewards[rows] = e.rewards.detach().float().cpu()
        masks[rows, : e.action_mask.shape[1]] = e.action_mask.detach().float().cpu()
    return rewards, masks


def apply_reinforce_max(experiences, group_size: int, uniform_scale: bool) -> None:
    """Replace every experience's advantages by ``reinforce_max_advantages`` of its group."""
    from ...advantages import reinforce_max_advantages

    rewards, masks = group_rewards_and_masks(experiences, group_size)
    advantages = reinforce_max_advantages(rewards, masks, group_size, uniform_scale)
    for e in experiences:
        width = e.action_mask.shape[1]
        rows = advantages[list(e.index), :width]
        e.advantages = rows.to(device=e.action_mask.device, dtype=e.advantages.dtype if e.advantages is not None
                               else rows.dtype)


def make_compute_advantages(original, settings):
    @functools.wraps(original)
    def compute_advantages_and_returns(self, experiences):
        import torch

        experiences = original(self, experiences)
        with torch.no_grad():
            apply_reinforce_max(experiences, self.strategy.args.rollout.n_samples_per_prompt, settings.uniform_scale)
        return experiences

    return compute_advantages_and_returns



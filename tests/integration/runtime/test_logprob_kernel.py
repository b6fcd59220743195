"""With top-K on, pi_old and pi_theta come from one log-prob kernel: the first PPO ratio is exactly 1.

Upstream's ``log_probs_from_logits`` uses flash-attn's Triton cross-entropy when it is installed; the
top-K gather uses ``models.logprobs``. A stand-in Triton kernel that differs in the last bits shows
that, once patched, the old log-probs (no top-K request) no longer go through it.
"""

import sys
import types

import torch

from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.loss import PENDING, PendingTopK
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings


def fake_triton_cross_entropy(monkeypatch):
    """flash_attn.ops.triton.cross_entropy.cross_entropy_loss, numerically a different kernel."""

    def cross_entropy_loss(logits, labels):
        lp = torch.log_softmax(logits.double(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)
        return (-(lp + 1e-6)).float(), None

    for name in ("flash_attn.ops", "flash_attn.ops.triton"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType("flash_attn.ops.triton.cross_entropy")
    module.cross_entropy_loss = cross_entropy_loss
    monkeypatch.setitem(sys.modules, "flash_attn.ops.triton.cross_entropy", module)


def test_old_and_current_log_probs_are_bitwise_equal_with_topk_so_the_first_ratio_is_one(tiny_model_dir,
                                                                                         monkeypatch):
    from openrlhf.models import Actor
    from openrlhf.models import actor as actor_module

    fake_triton_cross_entropy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    B, T, K = 2, 8, 3
    sequences = torch.randint(0, 64, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    action_mask = torch.ones(B, T - 1, dtype=torch.bool)
    model = Actor(tiny_model_dir, attn_implementation="eager", param_dtype="bf16")
    model.eval()
    with torch.no_grad():
        upstream_old = model(sequences, action_mask, attention_mask=attention_mask)
    patches.install(OffPolicySettings(logprobs_topk=K))
    try:
        assert actor_module.log_probs_from_logits is not patches.upstream_value(actor_module, "log_probs_from_logits")
        with torch.no_grad():
            old = model(sequences, action_mask, attention_mask=attention_mask)  # PolicyModelActor.forward
        pending = PendingTopK(ids=torch.randint(0, 64, (B, T - 1, K), generator=g),
                              rollout_log_probs=torch.zeros(B, T - 1, K), action_ids=sequences[:, 1:])
        token = PENDING.set(pending)
        try:
            current = model(sequences, action_mask, attention_mask=attention_mask)  # training_step
        finally:
            PENDING.reset(token)
    finally:
        patches.undo()
    assert pending.log_probs is not None
    assert torch.equal(current.detach(), old), "the PPO ratio at the first micro-step must be exactly 1"
    assert torch.equal(torch.exp(current.detach() - old), torch.ones_like(old))
    assert not torch.equal(upstream_old, old), "the stand-in Triton kernel differs: the patch must bypass it"

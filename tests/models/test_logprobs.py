import torch

from openrlhf_offpolicy.models.logprobs import log_probs_with_topk, logsumexp_by_chunk


def test_label_and_topk_log_probs_equal_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 3
    labels = torch.randint(0, 50, (3, 7), generator=g)
    ids = torch.randint(0, 50, (3, 7, 5), generator=g)
    label_lp, topk_lp = log_probs_with_topk(logits, labels, ids)
    reference = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(label_lp, reference.gather(-1, labels.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    assert torch.allclose(topk_lp, reference.gather(-1, ids), atol=1e-5)


def test_chunking_does_not_change_the_log_normaliser():
    flat = torch.randn(2500, 33, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(logsumexp_by_chunk(flat, chunk=7), torch.logsumexp(flat, dim=-1))


def test_empty_slots_are_gathered_safely():
    logits = torch.randn(1, 2, 6)
    label_lp, topk_lp = log_probs_with_topk(logits, torch.zeros(1, 2, dtype=torch.long),
                                            torch.tensor([[[1, -1], [-1, -1]]]))
    assert torch.isfinite(topk_lp).all() and topk_lp.shape == (1, 2, 2)


# --------------------------------------------------------------------------- the truncated path
import pytest  # noqa: E402

from openrlhf_offpolicy.models.logprobs import Truncation, saved_tensor_bytes  # noqa: E402

TRUNCATIONS = [Truncation(top_p=0.9), Truncation(top_k=20), Truncation(top_k=50, top_p=0.8), Truncation(min_p=0.05),
               Truncation(top_k=30, top_p=0.7, min_p=0.01)]


def reference_truncated_log_probs(logits, index, truncation):
    """float64, written from the definition: log pi_trunc(x) = z_x - logsumexp_{y kept} z_y (-inf off
    the kept set), the kept set built token by token in vLLM's order (min-p, top-k, top-p on the sorted
    probabilities, ascending cumulative mass, the most likely token always kept)."""
    z = logits.double()
    keep = torch.ones_like(z, dtype=torch.bool)
    if truncation.min_p > 0:
        p = torch.softmax(z, -1)
        keep &= p >= truncation.min_p * p.max(-1, keepdim=True).values
    if truncation.top_k > 0:
        kth = torch.where(keep, z, -torch.inf).sort(-1, descending=True).values[:, truncation.top_k - 1: truncation.top_k]
        keep &= z >= kth
    if truncation.top_p < 1:
        for r in range(z.shape[0]):
            kept_ids = keep[r].nonzero().squeeze(-1)
            p = torch.softmax(z[r, kept_ids], -1)
            order = p.argsort(descending=True)
            before = torch.cumsum(p[order], 0) - p[order]
            drop = kept_ids[order][before >= truncation.top_p]
            keep[r, drop] = False
    masked = torch.where(keep, z, -torch.inf)
    return masked.gather(-1, index) - torch.logsumexp(masked, -1, keepdim=True)


@pytest.mark.parametrize("truncation", TRUNCATIONS, ids=str)
def test_truncated_log_probs_and_gradients_equal_a_float64_reference(truncation):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(40, 300, generator=g, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.randint(0, 300, (40,), generator=g)
    ids = torch.randint(0, 300, (40, 4), generator=g)
    label_lp, topk_lp = log_probs_with_topk(logits, labels, ids, truncation=truncation, chunk=7)
    ref = reference_truncated_log_probs(logits, torch.cat([labels[:, None], ids], -1), truncation)
    torch.testing.assert_close(torch.cat([label_lp[:, None], topk_lp], -1), ref, rtol=0, atol=1e-10)
    weights = torch.randn(40, 5, generator=g, dtype=torch.float64)
    finite = torch.isfinite(ref)
    (grad,) = torch.autograd.grad((torch.cat([label_lp[:, None], topk_lp], -1) * weights)[finite].sum(), logits)
    logits_ref = logits.detach().clone().requires_grad_()
    ref = reference_truncated_log_probs(logits_ref, torch.cat([labels[:, None], ids], -1), truncation)
    (grad_ref,) = torch.autograd.grad((ref * weights)[finite].sum(), logits_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-10)


def test_truncation_keeps_at_most_1_1x_the_untruncated_paths_saved_tensor_bytes_for_backward():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(256, 32000, generator=g) * 2).requires_grad_()
    labels = torch.randint(0, 32000, (256,), generator=g)
    plain = saved_tensor_bytes(lambda: log_probs_with_topk(logits, labels)[0].sum())
    truncated = saved_tensor_bytes(lambda: log_probs_with_topk(logits, labels, truncation=Truncation(top_p=0.9))[0]
                                   .sum())
    assert plain >= logits.numel() * 4  # the logits themselves are kept for backward
    assert truncated / plain <= 1.1, f"truncated / untruncated saved bytes = {truncated / plain:.3f}"

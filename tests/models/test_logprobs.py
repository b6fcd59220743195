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

"""Attack suite, the engine side: vLLM's routed experts and top-K rows are checked once per sample;
a NaN top-K log-prob is dropped and counted by the loss; ids are checked against the vocabulary."""

import numpy as np
import pytest
import torch
from hostile import topk_inputs
from helpers import random_inputs

from openrlhf_offpolicy.integration.runtime.routing import experience_field
from openrlhf_offpolicy.integration.runtime.topk import experience_fields, topk_rows
from openrlhf_offpolicy.models import PolicyLoss
from openrlhf_offpolicy.models.logprobs import log_probs_with_topk
from openrlhf_offpolicy.models.routing_replay import RoutingReplayError


@pytest.mark.parametrize("routed,message", [
    (np.array([[[5, 3]], [[np.nan, 2.9]]]), "integer ids"),
    (np.array([[[5.0, 3.0]], [[1.0, 2.9]]]), "integer ids"),
    (np.array([[[True, False]]]), "integer ids"),
    (np.array([[[5, 5]], [[1, 2]]], dtype=np.uint8), "token 0, MoE layer 0"),
    (np.array([[[1, 2]], [[4, 4]]], dtype=np.uint16), "twice at token 1"),
    (np.array([[[1, -2]]], dtype=np.int64), "out of range"),
    (np.zeros((2, 3)), "must be"),
])
def test_malformed_vllm_routed_experts_are_refused_once_per_sample(routed, message):
    with pytest.raises(RoutingReplayError, match=message) as e:
        experience_field(routed, 16)
    assert "\n" not in str(e.value)


def test_well_formed_routed_experts_keep_their_ids():
    routed = np.array([[[5, 3]], [[0, 2]]], dtype=np.uint8)
    field = experience_field(routed, 16)
    assert field.dtype == torch.uint8 and field[0, 0, :, :2].T.tolist() == [[5, 3], [0, 2]]


def test_a_dense_layers_all_zero_row_in_vllms_layout_is_not_a_repeated_expert():
    """vLLM leaves a dense decoder layer's row at 0 (DeepSeek-V3's first layers): accepted, while a
    repeated nonzero id in an MoE layer's row is still refused."""
    routed = np.array([[[0, 0], [5, 3]], [[0, 0], [0, 2]]], dtype=np.uint8)
    assert experience_field(routed, 16).shape[1] == 2
    with pytest.raises(RoutingReplayError, match="twice at token 1, MoE layer 1"):
        experience_field(np.array([[[0, 0], [5, 3]], [[0, 0], [2, 2]]], dtype=np.uint8), 16)


class LP:
    def __init__(self, logprob, rank):
        self.logprob, self.rank = logprob, rank


def test_a_nan_top_k_log_prob_is_dropped_and_counted_not_a_valid_probability_0_slot():
    ids, lps = topk_rows([{7: LP(-0.1, 1), 3: LP(float("nan"), 2)}], 2)
    assert ids == [[7, 3]] and np.isnan(lps[0][1])
    inputs = random_inputs(batch=1, length=1, dtype=torch.float32)
    topk = {"rollout_topk_ids": torch.tensor([[ids[0]]]), "rollout_topk_log_probs": torch.tensor([[lps[0]]]),
            "topk_log_probs": torch.tensor([[[-0.2, -2.0]]]), "action_ids": torch.tensor([[7]])}
    loss = PolicyLoss(policy_loss_type="dppo", dppo_divergence="topk_tv")
    out = loss(**inputs, **topk)
    assert torch.isfinite(out[0]) and float(loss.metrics["loss/nonfinite_frac"]) == 1.0


def _response(ids, lps):
    return {"rollout_topk_ids": [[-1] * len(ids[0])] + ids, "rollout_topk_log_probs": [[0.0] * len(ids[0])] + lps}


def test_top_k_rows_of_the_wrong_width_are_refused_not_reshaped():
    with pytest.raises(ValueError, match="top-K row 0 has 3 ids .* expected K = 4"):
        experience_fields(_response([[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]], [[0.0] * 3] * 4), 64, 4)


@pytest.mark.parametrize("bad", [2**31, -2, 1.5, True])
def test_top_k_ids_outside_int32_or_not_integers_are_a_value_error(bad):
    with pytest.raises(ValueError, match="is not an id"):
        experience_fields(_response([[1, bad]], [[0.0, -1.0]]), 64, 2)


def test_top_k_ids_outside_the_vocabulary_are_a_value_error_before_the_gather():
    logits = torch.randn(2, 3, 10)
    labels = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="outside the vocabulary of 10"):
        log_probs_with_topk(logits, labels, torch.full((2, 3, 2), 10))


def test_float_top_k_ids_are_refused_by_the_loss():
    inputs = random_inputs(batch=2, length=3, dtype=torch.float32)
    topk = topk_inputs(inputs, k=2)
    topk["rollout_topk_ids"] = topk["rollout_topk_ids"].float()
    with pytest.raises(ValueError, match="integer token ids"):
        PolicyLoss(policy_loss_type="dppo", dppo_divergence="topk_tv")(**inputs, **topk)


@pytest.mark.parametrize("ids, message", [
    (np.array([[-1, -1], [1, 2**40]], np.int64), "is not an id"),
    (np.array([[-1, -1], [1.0, 2.0]]), "must be integers"),
    (np.array([[-1, -1, -1], [1, 2, 3]], np.int32), r"expected \[tokens, K = 2\]"),
])
def test_top_k_arrays_from_the_flat_path_are_checked_like_rows(ids, message):
    """The executor hands numpy ``[n_obs, K]`` arrays (issue 18's flat path): the same refusals, vectorised."""
    with pytest.raises(ValueError, match=message):
        experience_fields({"rollout_topk_ids": ids, "rollout_topk_log_probs": np.zeros(ids.shape, np.float32)}, 64, 2)

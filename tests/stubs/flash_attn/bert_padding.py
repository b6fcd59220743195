"""Pure-torch versions of the padding helpers in ``flash_attn.bert_padding`` (test stand-in).

Layout: ``unpad_input`` packs the tokens where ``attention_mask`` is 1 into one ``[nnz, ...]``
tensor, row-major; ``pad_input`` scatters them back into ``[batch, seqlen, ...]``.
"""

import torch
import torch.nn.functional as F
from einops import rearrange  # noqa: F401  (re-exported: OpenRLHF imports it from here)


def index_first_axis(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return values[indices]


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask=None):
    keep = attention_mask if unused_mask is None else attention_mask + unused_mask
    seqlens = keep.sum(dim=-1, dtype=torch.int32)
    used_seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(keep.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, int(seqlens.max().item()), used_seqlens


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    out = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    out[indices] = hidden_states
    return out.reshape(batch, seqlen, *hidden_states.shape[1:])

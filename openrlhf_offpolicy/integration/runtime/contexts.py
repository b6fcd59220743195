"""Context variables set around upstream's actor forwards and read by the log-prob kernel
(``wrappers.log_probs_from_logits``). Standard library only.
"""

import contextvars

# The truncation to apply to the policy's logits (None: none), set around the policy's forwards.
POLICY_TRUNCATION: contextvars.ContextVar = contextvars.ContextVar("openrlhf_offpolicy_truncation", default=None)
# The top-K ids to gather in the same pass, set by the top-K Actor.forward wrapper (``topk``).
LOGITS_TOPK_IDS: contextvars.ContextVar = contextvars.ContextVar("openrlhf_offpolicy_logits_topk", default=None)

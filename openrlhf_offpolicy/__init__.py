"""openrlhf_offpolicy: off-policy corrections for OpenRLHF 0.11.2 under rollout/training mismatch."""

__version__ = "0.1.0"

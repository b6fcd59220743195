#!/usr/bin/env bash
# Baseline: PPO/GRPO with DAPO clip-higher and no mismatch correction (configs/baseline.yaml). The
# rollout log-probs are still requested, so the mismatch/* metrics are logged for comparison.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# PRESET=<baseline|lite_ppo|m2po> (default baseline): LitePPO (arXiv 2508.08221) and M2PO (arXiv 2510.01161)
# are PPO without a correction too.
launch --config "configs/${PRESET:-baseline}.yaml" "$@"

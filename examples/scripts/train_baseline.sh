#!/usr/bin/env bash
# Baseline: PPO/GRPO with DAPO clip-higher and no mismatch correction (configs/baseline.yaml). The
# rollout log-probs are still requested, so the mismatch/* metrics are logged for comparison.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch --config configs/baseline.yaml "$@"

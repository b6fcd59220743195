#!/usr/bin/env bash
# DPPO (arXiv 2602.04879): divergence-gated trust region anchored on the rollout policy.
# Pick the method with LOSS=<dppo|dppo_kl|dppo_topk> (default dppo); the preset configs/<method>.yaml holds the
# paper's hyperparameters. Extra arguments are appended to the command line (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOSS="${LOSS:-dppo}"
launch --config "configs/${LOSS//-/_}.yaml" "$@"

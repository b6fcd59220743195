#!/usr/bin/env bash
# GSPO (arXiv 2507.18071): sequence-level ratio and clip; gspo_token adds a mismatch correction.
# Pick the method with LOSS=<gspo|gspo_token> (default gspo); the preset configs/<method>.yaml holds the
# paper's hyperparameters. Extra arguments are appended to the command line (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOSS="${LOSS:-gspo}"
launch --config "configs/${LOSS//-/_}.yaml" "$@"

#!/usr/bin/env bash
# Trust Region Masking (arXiv 2512.23075): reject a sequence whose max per-token KL (k2) exceeds delta.
# Pick the method with CORRECTION=<trm|trm_avg|trm_combined|trm_topk> (default trm); the preset configs/<method>.yaml holds the
# paper's hyperparameters. Extra arguments are appended to the command line (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CORRECTION="${CORRECTION:-trm}"
launch --config "configs/${CORRECTION//-/_}.yaml" "$@"

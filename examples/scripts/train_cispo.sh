#!/usr/bin/env bash
# CISPO (MiniMax-M1, arXiv 2506.13585): clip the IS weight, keep every token's gradient.
# Pick the method with LOSS=<cispo> (default cispo); the preset configs/<method>.yaml holds the
# paper's hyperparameters. Extra arguments are appended to the command line (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOSS="${LOSS:-cispo}"
launch --config "configs/${LOSS//-/_}.yaml" "$@"

#!/usr/bin/env bash
# Token-level mismatch corrections on top of PPO/GRPO: TIS (truncated IS) or IcePop (token mask).
# Pick the method with CORRECTION=<tis|icepop> (default tis); the preset configs/<method>.yaml holds the
# paper's hyperparameters. Extra arguments are appended to the command line (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CORRECTION="${CORRECTION:-tis}"
launch --config "configs/${CORRECTION//-/_}.yaml" "$@"

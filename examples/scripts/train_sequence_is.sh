#!/usr/bin/env bash
# Sequence-level mismatch corrections: Geo-Mask, seq-mask-tis, Seq-TIS, Seq-MIS, or the prefix gate reinforce_pro.
# Pick the method with CORRECTION=<geo-mask|seq-mask-tis|seq-tis|seq-mis|reinforce_pro> (default geo-mask); the preset configs/<method>.yaml holds the
# paper's hyperparameters. Extra arguments are appended to the command line (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CORRECTION="${CORRECTION:-geo-mask}"
launch --config "configs/${CORRECTION//-/_}.yaml" "$@"

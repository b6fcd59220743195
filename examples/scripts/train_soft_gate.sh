#!/usr/bin/env bash
# Soft gates: SAPO (arXiv 2511.20347) or IS-Reshape kernels ("IS Reshape: from f-divergence to localisation kernels", v6.0, the seed fork's note).
# Pick the method with LOSS=<sapo|is_reshape> (default sapo); the preset configs/<method>.yaml holds the
# paper's hyperparameters. Extra arguments are appended to the command line (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOSS="${LOSS:-sapo}"
launch --config "configs/${LOSS//-/_}.yaml" "$@"

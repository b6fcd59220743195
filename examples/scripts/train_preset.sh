#!/usr/bin/env bash
# Any method through its preset: PRESET=<name> runs configs/<name>.yaml (the paper's values), e.g.
#   PRESET=gmpo bash examples/scripts/train_preset.sh
# The README's script list names the presets this script runs. Extra arguments are appended (they win).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ -z "${PRESET:-}" ]]; then
  echo "train_preset.sh: set PRESET=<name> (a file configs/<name>.yaml)" >&2
  exit 2
fi
launch --config "configs/${PRESET//-/_}.yaml" "$@"

#!/usr/bin/env bash
# Shared base of the example launch scripts (sourced by train_*.sh): a GRPO-style math run of
# Qwen2.5-Math-1.5B on one node of 8 GPUs with the hybrid engine (vLLM and DeepSpeed share the
# GPUs), group-normalised advantages over 8 samples per prompt and a verifiable 0/1 reward.
#
#   bash examples/scripts/train_sequence_is.sh                       # submit to the Ray cluster
#   CORRECTION=geo-mask bash examples/scripts/train_sequence_is.sh   # pick a method of the family
#   DRY_RUN=1 bash examples/scripts/train_trm.sh                     # print the resolved config, no Ray
#   bash examples/scripts/train_trm.sh --train.num_episodes 3        # extra flags are appended
#
# Environment: RAY_ADDRESS (default http://127.0.0.1:8265), MODEL, DATASET, INPUT_KEY, LABEL_KEY,
# SAVE_DIR, WANDB_API_KEY (enables wandb), PYTHON (default for DRY_RUN: the repository's .venv/bin/python
# when it exists, else python3; for the Ray job: python3 on the cluster), DRY_RUN=1, PRINT_ARGV=1 (print the CLI arguments one per line and exit: used by
# the tests).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MODEL="${MODEL:-Qwen/Qwen2.5-Math-1.5B}"
DATASET="${DATASET:-zhuzilin/dapo-math-17k}"
INPUT_KEY="${INPUT_KEY:-prompt}"
LABEL_KEY="${LABEL_KEY:-label}"
SAVE_DIR="${SAVE_DIR:-./checkpoint}"
LOCAL_PYTHON="${PYTHON:-python3}"
if [[ -z "${PYTHON:-}" && -x "$REPO_DIR/.venv/bin/python" ]]; then LOCAL_PYTHON="$REPO_DIR/.venv/bin/python"; fi

BASE_ARGS=(
  --actor.model_name_or_path "$MODEL"
  --actor.num_nodes 1 --actor.num_gpus_per_node 8
  --ref.num_nodes 1 --ref.num_gpus_per_node 8
  --vllm.num_engines 8 --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6
  --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable --ds.packing_samples
  --reward.remote_url examples/scripts/reward_math.py
  --data.prompt_dataset "$DATASET" --data.input_key "$INPUT_KEY" --data.label_key "$LABEL_KEY"
  --data.apply_chat_template --data.max_len 4096 --rollout.max_new_tokens 3072
  --rollout.n_samples_per_prompt 8
  --rollout.batch_size 128 --rollout.micro_batch_size 16
  --train.batch_size 256 --train.micro_batch_size 4 --train.max_epochs 1 --train.num_episodes 10
  --rollout.temperature 1.0 --actor.adam.lr 1e-6 --algo.kl.init_coef 0
  --ckpt.output_dir "$SAVE_DIR" --logger.wandb.project openrlhf_offpolicy
)
if [[ -n "${WANDB_API_KEY:-}" ]]; then
  BASE_ARGS+=(--logger.wandb.key "$WANDB_API_KEY")
fi

# launch FLAG...: run train_ppo_ray with the base flags followed by FLAG...; the advantages are
# group-normalised unless the --config preset picks its own estimator (command-line flags would win over it).
launch() {
  local estimator=(--algo.advantage.estimator group_norm) previous=""
  for arg in "$@"; do
    if [[ "$previous" == --config ]] && grep -q '^algo\.advantage\.estimator:' "$REPO_DIR/$arg" 2>/dev/null; then
      estimator=()
    fi
    previous="$arg"
  done
  local cmd=("${PYTHON:-python3}" -m openrlhf_offpolicy.cli.train_ppo_ray "${BASE_ARGS[@]}" "${estimator[@]}" "$@")
  if [[ "${PRINT_ARGV:-0}" == 1 ]]; then
    printf '%s\n' "${cmd[@]:3}"
  elif [[ "${DRY_RUN:-0}" == 1 ]]; then
    (cd "$REPO_DIR" && "$LOCAL_PYTHON" "${cmd[@]:1}" --dry_run)
  else
    (cd "$REPO_DIR" && ray job submit --address="${RAY_ADDRESS:-http://127.0.0.1:8265}" \
      --runtime-env-json='{"working_dir": ".", "excludes": [".venv", ".git", "lab_results", "bench_results", "checkpoint"]}' \
      -- "${cmd[@]}")
  fi
}

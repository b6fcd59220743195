"""The OpenRLHF 0.9.x fork's own launch scripts (richardodliu/OpenRLHF 0.9.3, ``examples/scripts``), run
unedited but for the module name: each dry-runs to the configuration of its hand translation to 0.11.2.

``fork_scripts/*.sh`` keep the scripts' shapes (plain ``python3 -m``, bash arrays, ``ray job submit --``,
a Slurm job whose inner ``srun ... bash -c "... ray job submit -- ..."`` carries the command); only
comment lines were left out and the Slurm template's path placeholder filled in. The shims in
``fork_scripts/bin`` stand in for ``python3``, ``ray``, ``srun``, ``scontrol``, ``pip`` and ``sleep``:
they record the ``train_ppo_ray`` command line the script builds, exactly as bash expands it.
"""

import os
import subprocess

import pytest
from helpers import dry_run

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "fork_scripts")
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def script_argv(name: str, tmp_path) -> list:
    """The train_ppo_ray arguments the fork's script ``name`` passes, as bash expands them."""
    capture = tmp_path / f"{name}.argv"
    env = {**os.environ, "PATH": os.path.join(SCRIPTS, "bin") + os.pathsep + os.environ["PATH"],
           "CAPTURE": str(capture)}
    subprocess.run(["bash", os.path.join(SCRIPTS, f"{name}.sh")], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=60)
    return capture.read_bytes().decode().split("\0")[:-1]


# WORK_DIR: the scripts compute it from their own path ($0/../..).
WORK_DIR = os.path.abspath(os.path.join(SCRIPTS, "..", ".."))

# Written by hand from the 0.11.2 parser's help, flag by flag.
HAND = {
    "train_ppo_ray_hybrid_engine": """
      --ref.num_nodes 1 --ref.num_gpus_per_node 8 --reward.num_nodes 1 --reward.num_gpus_per_node 8
      --critic.num_nodes 1 --critic.num_gpus_per_node 8 --actor.num_nodes 1 --actor.num_gpus_per_node 8
      --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --train.colocate_all --vllm.gpu_memory_utilization 0.5
      --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture --reward.model_name_or_path OpenRLHF/Llama-3-8b-rm-700k
      --ckpt.output_dir /openrlhf/examples/test_scripts/final/llama3-8b-rlhf
      --ckpt.path /openrlhf/examples/test_scripts/ckpt/llama3-8b-rlhf --ckpt.save_hf
      --train.batch_size 128 --rollout.batch_size 1024 --rollout.n_samples_per_prompt 1 --train.max_epochs 1
      --data.max_len 2048 --data.max_samples 100000 --rollout.max_new_tokens 1024
      --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 5e-7 --critic.adam.lr 9e-6 --algo.kl.init_coef 0.01
      --data.prompt_dataset OpenRLHF/prompt-collection-v0.1 --data.input_key context_messages
      --data.apply_chat_template --reward.normalize_enable --actor.gradient_checkpointing_enable
      --ds.packing_samples --vllm.sync_backend nccl --vllm.enforce_eager --vllm.enable_sleep --ds.enable_sleep
      --train.dynamic_batch_enable --train.max_tokens_per_gpu 16384 --enable_vllm_is_correction
    """,
    "train_ppo_ray_slurm": """
      --ref.num_nodes 1 --ref.num_gpus_per_node 4 --reward.num_nodes 1 --reward.num_gpus_per_node 4
      --critic.num_nodes 1 --critic.num_gpus_per_node 4 --actor.num_nodes 1 --actor.num_gpus_per_node 4
      --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --train.colocate_critic_reward --train.colocate_actor_ref
      --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture
      --reward.model_name_or_path OpenRLHF/Llama-3-8b-rm-mixture
      --ckpt.output_dir /openrlhf/examples/checkpoint/llama3-8b-rlhf
      --train.micro_batch_size 8 --train.batch_size 128 --rollout.micro_batch_size 16 --rollout.batch_size 1024
      --data.max_samples 100000 --train.max_epochs 1 --data.max_len 2048 --rollout.max_new_tokens 1024
      --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 5e-7 --critic.adam.lr 9e-6 --algo.kl.init_coef 0.01
      --data.prompt_dataset OpenRLHF/prompt-collection-v0.1 --data.input_key context_messages
      --data.apply_chat_template --reward.normalize_enable --ds.adam_offload --ds.packing_samples
      --vllm.sync_backend nccl --actor.gradient_checkpointing_enable --logger.wandb.key {wandb_token}
    """,
    "train_ppo_with_reward_fn": """
      --ref.num_nodes 1 --ref.num_gpus_per_node 2 --critic.num_nodes 1 --critic.num_gpus_per_node 2
      --actor.num_nodes 1 --actor.num_gpus_per_node 2 --vllm.num_engines 2 --vllm.tensor_parallel_size 2
      --train.colocate_actor_ref --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture
      --reward.remote_url /openrlhf/examples/python/reward_func.py
      --ckpt.output_dir /openrlhf/examples/checkpoint/llama3-8b-rlhf
      --train.micro_batch_size 8 --train.batch_size 128 --rollout.micro_batch_size 16 --rollout.batch_size 1024
      --data.max_samples 100000 --train.max_epochs 1 --data.max_len 2048 --rollout.max_new_tokens 1024
      --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 5e-7 --critic.adam.lr 9e-6 --algo.kl.init_coef 0.01
      --data.prompt_dataset OpenRLHF/prompt-collection-v0.1 --data.input_key context_messages
      --data.apply_chat_template --reward.normalize_enable --ds.packing_samples --ds.adam_offload
      --ds.attn_implementation flash_attention_2 --actor.gradient_checkpointing_enable
      --logger.wandb.key {wandb_token}
    """,
    "train_prorlv2_math_hybrid_engine": """
      --ref.num_nodes 1 --ref.num_gpus_per_node 8 --actor.num_nodes 1 --actor.num_gpus_per_node 8
      --vllm.num_engines 8 --vllm.tensor_parallel_size 1 --train.colocate_all --vllm.gpu_memory_utilization 0.75
      --algo.kl.init_coef 1e-4 --algo.advantage.gamma 1.0 --algo.kl.use_loss --algo.kl.estimator k2
      --algo.advantage.estimator reinforce_baseline --algo.dynamic_filtering_enable
      --algo.dynamic_filtering_range 0 1 --actor.eps_clip_low_high 0.2 0.27
      --actor.model_name_or_path deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
      --reward.remote_url {WORK_DIR}/examples/python/math_reward_func.py
      --ckpt.output_dir {WORK_DIR}/exp/DeepSeek-R1-Qwen-1.5B-PRORLV2
      --ckpt.path {WORK_DIR}/exp/DeepSeek-R1-Qwen-1.5B-PRORLV2/ckpt --ckpt.save_steps 5 --ckpt.save_hf
      --train.batch_size 1024 --rollout.batch_size 512 --rollout.n_samples_per_prompt 16
      --train.dynamic_batch_enable --train.num_episodes 100 --data.max_len 9216 --rollout.max_new_tokens 8192
      --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 1e-6 --data.prompt_dataset OpenRLHF/dapo-math-17k
      --data.input_key prompt --data.label_key label --eval.dataset OpenRLHF/aime-2024 --eval.steps 5
      --eval.temperature 1.0 --eval.n_samples_per_prompt 4 --data.apply_chat_template
      --actor.gradient_checkpointing_enable --ds.packing_samples --vllm.sync_backend nccl --vllm.enforce_eager
      --vllm.enable_sleep --ds.enable_sleep --enable_vllm_is_correction --vllm_is_truncated_threshold 0.5 5.0
      --vllm_is_correction_type icepop --train.max_tokens_per_gpu 32768 --reward.stop_properly_penalty_coef 0.0
    """,
}
# The REINFORCE++-baseline scripts (ring attention, agent function, tensorboard), sync and async.
_REINFORCE_BASELINE = """
      --actor.model_name_or_path Qwen/Qwen3-4B-Thinking-2507 --ckpt.load_enable
      --ckpt.output_dir {WORK_DIR}/exp/Qwen3-4B-Thinking --ckpt.path {WORK_DIR}/exp/Qwen3-4B-Thinking/ckpt
      --ckpt.save_hf --ckpt.max_num 3 --ckpt.save_steps 10
      --train.agent_func_path examples/python/agent_func.py --data.prompt_dataset zhuzilin/dapo-math-17k
      --data.input_key prompt --data.label_key label --data.max_len 74240 --rollout.max_new_tokens 64000
      --data.apply_chat_template --ds.packing_samples --rollout.batch_size 128 --rollout.n_samples_per_prompt 8
      --train.batch_size 1024 --algo.dynamic_filtering_enable --algo.dynamic_filtering_range 0.0 1.0
      --train.dynamic_batch_enable --train.max_tokens_per_gpu 16192 --rollout.max_tokens_per_gpu 32768
      --train.micro_batch_size 1 --rollout.micro_batch_size 8 --data.max_samples 128000 --train.max_epochs 1
      --train.num_episodes 1 {ASYNC}
      --ref.num_nodes 1 --ref.num_gpus_per_node 4 --actor.num_nodes 1 --actor.num_gpus_per_node 4
      --vllm.num_engines 2 --vllm.tensor_parallel_size 2 --vllm.gpu_memory_utilization 0.7 --train.colocate_all
      --ds.enable_sleep --vllm.sync_backend nccl --vllm.enforce_eager --ds.zero_stage 3
      --actor.gradient_checkpointing_enable --ds.ring_attn_size 2 --ds.ring_attn_head_stride 2 --ds.param_dtype bf16
      --algo.advantage.estimator reinforce_baseline --actor.adam.lr 5e-7 --actor.entropy_coef 0.0
      --algo.kl.init_coef 1e-5 --algo.kl.use_loss --algo.kl.estimator k2 --enable_vllm_is_correction
      --vllm_is_correction_type icepop --logger.tensorboard_dir {WORK_DIR}/exp/Qwen3-4B-Thinking/runs
      --logger.logging_steps 1 --eval.steps -1
"""
HAND["train_reinforce_baseline_hybrid_engine"] = _REINFORCE_BASELINE.replace("{ASYNC}", "")
HAND["train_reinforce_baseline_ray_agent_async"] = _REINFORCE_BASELINE.replace("{ASYNC}", "--train.async_enable")


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("name", sorted(HAND))
def test_a_fork_script_dry_runs_unedited_to_its_hand_translation(name, tmp_path, capsys):
    argv = script_argv(name, tmp_path)
    assert "--pretrain" in argv and "--prompt_max_len" in argv  # the 0.9.x spelling, as the script has it
    status, legacy = dry_run(argv, capsys)
    assert status == 0, legacy
    status, modern = dry_run(HAND[name].replace("{WORK_DIR}", WORK_DIR).split(), capsys)
    assert status == 0, modern
    legacy["upstream"].pop("logger.wandb.run_name"), modern["upstream"].pop("logger.wandb.run_name")
    assert legacy == modern


@pytest.mark.parametrize("name", ["train_prorlv2_math_hybrid_engine", "train_reinforce_baseline_hybrid_engine"])
def test_the_icepop_scripts_resolve_to_icepop(name, tmp_path, capsys):
    status, out = dry_run(script_argv(name, tmp_path), capsys)
    assert status == 0, out
    assert out["offpolicy"]["policy_loss"]["correction"] == "icepop"
    assert out["upstream"]["algo.advantage.estimator"] == "reinforce_baseline"


def test_the_translation_is_one_summary_line_with_the_length_note(tmp_path, capsys):
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    argv = script_argv("train_ppo_ray_slurm", tmp_path)
    assert main([*argv, "--dry_run"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_ppo_ray: note:")]
    assert len(notes) == 1, notes
    assert "translated 37 OpenRLHF 0.9.x flags" in notes[0] and "--verbose" in notes[0]
    assert "--data.max_len 2048 --rollout.max_new_tokens 1024" in notes[0]
    assert "cuts a prompt at max_len - max_new_tokens = 1024" in notes[0]
    assert main([*argv, "--dry_run", "--verbose"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_ppo_ray: note:")]
    assert len(notes) == 37


def test_the_dapo_scripts_own_typo_gets_a_did_you_mean(tmp_path, capsys):
    """The fork's DAPO script spells --vllm_enable_is_correction (the fork's parser would refuse it too)."""
    status, err = dry_run(script_argv("train_dapo_ray_hybrid_engine", tmp_path), capsys)
    assert status == 2 and err.count("\n") == 1
    assert "unknown flag --vllm_enable_is_correction; did you mean --enable_vllm_is_correction?" in err

"""OpenRLHF 0.9.x flat flags are translated to 0.11.2's dotted flags (one stderr line each)."""

import os

import pytest
from helpers import dry_run

from openrlhf_offpolicy.cli.train_ppo_ray import build_parser
from openrlhf_offpolicy.integration.driver import legacy_flags
from openrlhf_offpolicy.integration.driver.upstream_source import upstream_parser

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
NEW = legacy_flags.signatures(upstream_parser())
OLD = {**legacy_flags.load()["old"], **legacy_flags.OLDER_SIGNATURES}
OURS = [s for a in build_parser()._actions for s in a.option_strings]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_the_committed_derived_table_equals_a_fresh_derivation_against_the_installed_parser():
    derived = legacy_flags.derive(legacy_flags.load()["old"], NEW, OURS)
    assert derived == legacy_flags.load()["derived"]
    assert all(derived.values()), "every 0.9.10 flag maps somewhere, is hand-mapped, or has no equivalent"


def test_every_0_9_10_flag_is_translated_kept_or_explained():
    for flag in legacy_flags.load()["old"]:
        assert (flag in legacy_flags.table() or flag in legacy_flags.NO_EQUIVALENT or flag in NEW
                or flag in OURS), flag


@pytest.mark.parametrize("old,targets", sorted(legacy_flags.RENAMED.items()))
def test_hand_entry_targets_exist_in_0_11_2_and_take_the_same_values(old, targets):
    assert old not in NEW and old not in OURS, "a flag 0.11.2 still has needs no translation"
    for target in targets:
        assert NEW[target] == OLD[old], (target, NEW[target], OLD[old])
    values = {"flag": [], "1:int": ["3"], "1:float": ["0.5"], "1:str": ["x"], "2:float": ["0.1", "0.9"]}[OLD[old]]
    notes = []
    out = legacy_flags.translate([old, *values, "--rollout.batch_size", "8"], NEW, notes.append)
    assert out == [tok for t in targets for tok in (t, *values)] + ["--rollout.batch_size", "8"]
    assert len(notes) == 1 and old in notes[0] and targets[0] in notes[0]


@pytest.mark.parametrize("old", sorted(legacy_flags.NO_EQUIVALENT))
def test_a_flag_without_equivalent_is_one_line_naming_the_closest_replacement(old):
    assert old not in NEW and old not in OURS
    with pytest.raises(ValueError, match=f"{old} is an OpenRLHF 0.9.x flag with no 0.11.2 equivalent: .*--") as e:
        legacy_flags.translate([old], NEW, print)
    assert "\n" not in str(e.value)


def test_equals_form_and_flags_shared_by_actor_and_critic():
    notes = []
    out = legacy_flags.translate(["--pretrain=Qwen/Q", "--adam_betas", "0.9", "0.99", "--lr_scheduler", "constant"],
                                 NEW, notes.append)
    assert out == ["--actor.model_name_or_path=Qwen/Q", "--actor.adam.betas", "0.9", "0.99", "--critic.adam.betas",
                   "0.9", "0.99", "--actor.lr_scheduler", "constant", "--critic.lr_scheduler", "constant"]
    assert len(notes) == 3


def test_reinforce_max_maps_to_the_reinforce_max_estimator():
    out = legacy_flags.translate(["--advantage_estimator", "reinforce_max"], NEW, lambda _: None)
    assert out == ["--algo.advantage.estimator", "reinforce_max"]


# In the style of the OpenRLHF 0.9.x README's train_ppo_ray example (flags of the 0.9.10 parser), with
# Qwen, vLLM, GRPO advantages and the fork's TIS correction.
SEED_FORK_COMMAND = """
  --ref_num_nodes 1 --ref_num_gpus_per_node 8 --actor_num_nodes 1 --actor_num_gpus_per_node 8
  --vllm_num_engines 4 --vllm_tensor_parallel_size 2 --colocate_all_models --vllm_gpu_memory_utilization 0.6
  --pretrain Qwen/Qwen2.5-7B-Instruct --remote_rm_url examples/scripts/reward_math.py
  --save_path /tmp/qwen-grpo --ckpt_path /tmp/qwen-grpo/ckpt --save_hf_ckpt
  --micro_train_batch_size 4 --train_batch_size 128 --micro_rollout_batch_size 16 --rollout_batch_size 128
  --n_samples_per_prompt 8 --max_epochs 1 --max_len 4096 --max_new_tokens 3072 --max_samples 100000
  --zero_stage 3 --param_dtype bf16 --actor_learning_rate 1e-6 --init_kl_coef 0 --temperature 1.0
  --advantage_estimator group_norm --prompt_data zhuzilin/dapo-math-17k --input_key prompt --label_key label
  --apply_chat_template --gradient_checkpointing --packing_samples --vllm_sync_backend nccl --enforce_eager
  --vllm_enable_sleep --deepspeed_enable_sleep --use_wandb KEY --wandb_run_name qwen-tis
  --enable_vllm_is_correction --vllm_is_correction_type tis --vllm_is_truncated_threshold 0.5 2.0
""".split()

HAND_TRANSLATED = """
  --ref.num_nodes 1 --ref.num_gpus_per_node 8 --actor.num_nodes 1 --actor.num_gpus_per_node 8
  --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --train.colocate_all --vllm.gpu_memory_utilization 0.6
  --actor.model_name_or_path Qwen/Qwen2.5-7B-Instruct --reward.remote_url examples/scripts/reward_math.py
  --ckpt.output_dir /tmp/qwen-grpo --ckpt.path /tmp/qwen-grpo/ckpt --ckpt.save_hf
  --train.micro_batch_size 4 --train.batch_size 128 --rollout.micro_batch_size 16 --rollout.batch_size 128
  --rollout.n_samples_per_prompt 8 --train.max_epochs 1 --data.max_len 4096 --rollout.max_new_tokens 3072
  --data.max_samples 100000
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 1e-6 --algo.kl.init_coef 0 --rollout.temperature 1.0
  --algo.advantage.estimator group_norm --data.prompt_dataset zhuzilin/dapo-math-17k --data.input_key prompt
  --data.label_key label
  --data.apply_chat_template --actor.gradient_checkpointing_enable --ds.packing_samples --vllm.sync_backend nccl
  --vllm.enforce_eager --vllm.enable_sleep --ds.enable_sleep --logger.wandb.key KEY --logger.wandb.run_name qwen-tis
  --enable_vllm_is_correction --vllm_is_correction_type tis --vllm_is_truncated_threshold 0.5 2.0
""".split()


def test_a_0_9_x_command_line_dry_runs_to_the_same_configuration_as_its_hand_translation(capsys):
    status, legacy = dry_run(SEED_FORK_COMMAND, capsys)
    assert status == 0, legacy
    status, modern = dry_run(HAND_TRANSLATED, capsys)
    assert status == 0, modern
    assert legacy == modern
    assert legacy["offpolicy"]["policy_loss"]["correction"] == "tis"
    assert legacy["upstream"]["algo.advantage.estimator"] == "group_norm"


def test_translations_are_one_summary_line_and_verbose_lists_each(capsys):
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    flags = [t for t in SEED_FORK_COMMAND if t.startswith("--") and t not in OURS]
    assert main([*SEED_FORK_COMMAND, "--dry_run"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_ppo_ray: note:")]
    assert notes == [f"train_ppo_ray: note: translated {len(flags)} OpenRLHF 0.9.x flags to their 0.11.2 names; "
                     "--verbose lists each"]
    assert main([*SEED_FORK_COMMAND, "--dry_run", "--verbose"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("train_ppo_ray: note: OpenRLHF 0.9.x flag")]
    assert len(notes) == len(flags) > 30


def test_prompt_and_generate_max_len_become_one_total_length():
    notes = []
    out = legacy_flags.translate(["--prompt_max_len", "1024", "--generate_max_len=3072"], NEW, notes.append)
    assert out == ["--data.max_len", "4096", "--rollout.max_new_tokens=3072"]
    assert len(notes) == 2 and "cuts a prompt at max_len - max_new_tokens = 1024" in notes[0]


def test_prompt_max_len_beside_a_total_length_is_dropped_as_the_fork_did():
    notes = []
    out = legacy_flags.translate(["--max_len", "5000", "--prompt_max_len", "1024", "--generate_max_len", "2048"], NEW,
                                 notes.append)
    assert out == ["--data.max_len", "5000", "--rollout.max_new_tokens", "2048"]
    assert any("--prompt_max_len is dropped" in n for n in notes)


def test_prompt_max_len_alone_is_one_line_naming_both_ways_out():
    with pytest.raises(ValueError, match="give --generate_max_len G beside it .*--data.max_len"):
        legacy_flags.translate(["--prompt_max_len", "1024"], NEW, print)

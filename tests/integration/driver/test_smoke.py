"""The ``--smoke_test`` driver (integration/driver/smoke.py): argv rewriting, tiny assets, results and summary."""

import json
import math
import os

import pytest
import torch

from openrlhf_offpolicy.integration.driver import smoke
def _value(argv, flag):
    """The value of the last ``flag`` in ``argv`` (None: absent)."""
    idx = [i for i, tok in enumerate(argv) if tok == flag]
    return argv[idx[-1] + 1] if idx else None


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = str(tmp_path_factory.mktemp("smoke-hub"))
    argv = ["--actor.model_name_or_path", "Qwen/Qwen2.5-Math-1.5B", "--ds.packing_samples", "--vllm.enable_sleep",
            "--logger.wandb.key", "abc", "--logger.wandb.project", "proj", "--actor.num_gpus_per_node", "8",
            "--vllm.num_engines", "4", "--rollout.n_samples_per_prompt", "8", "--data.prompt_dataset", "no/such",
            "--data.input_key", "question", "--data.label_key", "answer"]
    return smoke.prepare(argv, 3, workdir)


def test_a_hub_name_gets_a_built_in_tiny_model_of_its_family(hub_run):
    from transformers import AutoConfig

    model_dir = _value(hub_run.argv, "--actor.model_name_or_path")
    assert model_dir == os.path.join(hub_run.workdir, "model")
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "qwen2" and config.num_hidden_layers == 2 and config.hidden_size == 64
    assert any(n.startswith("model: built-in tiny qwen2") for n in hub_run.notes)
    assert any("character-level" in n for n in hub_run.notes)


def test_gpu_only_and_wandb_flags_are_dropped_each_with_a_note(hub_run):
    for flag in ("--ds.packing_samples", "--vllm.enable_sleep", "--logger.wandb.key", "--logger.wandb.project"):
        assert flag not in hub_run.argv
        assert any(n.startswith(f"dropped {flag}") for n in hub_run.notes), flag
    assert "abc" not in hub_run.argv and "proj" not in hub_run.argv
    assert _value(hub_run.argv, "--logger.tensorboard_dir") == hub_run.tensorboard_dir


def test_sizes_are_capped_at_two_ranks_two_engines_and_four_samples(hub_run):
    argv = hub_run.argv
    assert _value(argv, "--actor.num_gpus_per_node") == "2"
    assert _value(argv, "--vllm.num_engines") == "2"
    assert _value(argv, "--rollout.n_samples_per_prompt") == "4"
    assert _value(argv, "--vllm.sync_backend") == "gloo"
    prompts, samples = int(_value(argv, "--rollout.batch_size")), int(_value(argv, "--train.batch_size"))
    assert samples == prompts * 4
    assert samples % (2 * int(_value(argv, "--train.micro_batch_size"))) == 0
    for flag in {t for t in argv if t.startswith("--")}:  # every flag set once
        assert argv.count(flag) == 1, flag


def test_a_missing_dataset_becomes_synthetic_prompts_under_the_users_keys(hub_run):
    path = _value(hub_run.argv, "--data.prompt_dataset")
    assert path == os.path.join(hub_run.workdir, "prompts.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) >= 2 * 3
    for row in rows:
        assert set(row) == {"question", "answer"}
        assert row["question"] == f"Repeat the letter {row['answer']}: "
    assert any("not on disk: no/such" in n for n in hub_run.notes)


def test_a_local_dataset_is_kept(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"input": "hi", "label": "a"}\n')
    run = smoke.prepare(["--actor.model_name_or_path", "meta-llama/Llama-3.1-8B", "--data.prompt_dataset",
                         str(data)], 2, str(tmp_path / "w"))
    assert _value(run.argv, "--data.prompt_dataset") == str(data)
    assert f"data: {data}" in run.notes
    assert not os.path.exists(tmp_path / "w" / "prompts.jsonl")


@pytest.mark.parametrize("name,family", [
    ("Qwen/Qwen2.5-Math-1.5B", "qwen2"), ("Qwen/Qwen3-8B", "qwen3"), ("Qwen/Qwen3-30B-A3B", "qwen3_moe"),
    ("Qwen/Qwen3-235B-A22B", "qwen3_moe"), ("deepseek-ai/DeepSeek-V3", "deepseek_v3"),
    ("mistralai/Mixtral-8x7B-v0.1", "mixtral"), ("meta-llama/Llama-3.1-8B", "llama"), ("gpt2", "qwen2"),
])
def test_guess_family_maps_hub_names_to_a_built_in_family(name, family):
    assert smoke.guess_family(name)[0] == family
    assert family in smoke.FAMILIES


def test_deepseek_r1_distill_models_are_guessed_the_dense_base_they_name():
    assert smoke.guess_family("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")[0] == "qwen2"
    assert smoke.guess_family("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")[0] == "llama"
    assert smoke.guess_family("deepseek-ai/DeepSeek-R1")[0] == "deepseek_v3"


def test_a_distill_suffix_naming_no_family_keeps_the_family_named_before_it():
    assert smoke.guess_family("someone/Qwen3-30B-A3B-Distill")[0] == "qwen3_moe"
    assert smoke.guess_family("someone/Llama-3.1-8B-Distill-X")[0] == "llama"


def test_tiny_config_shrinks_a_local_qwen3_moe_keeping_its_dense_layers(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    Qwen3MoeConfig(vocab_size=1000, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                   num_key_value_heads=4, head_dim=64, intermediate_size=1024, moe_intermediate_size=256,
                   num_experts=64, num_experts_per_tok=8, mlp_only_layers=[0, 4]).save_pretrained(tmp_path)
    config, note = smoke.tiny_config(str(tmp_path), 100)
    assert config.model_type == "qwen3_moe" and config.vocab_size == 100
    assert config.num_hidden_layers == 2 and config.mlp_only_layers == [0]
    assert (config.hidden_size, config.num_experts, config.num_experts_per_tok) == (64, 8, 2)
    assert "shrunk to 2 layers" in note
    model = AutoModelForCausalLM.from_config(config)
    mlps = [type(layer.mlp).__name__ for layer in model.model.layers]
    assert mlps[0] != mlps[1] and "Sparse" in mlps[1]


def test_tiny_config_keeps_deepseek_v3s_dense_first_layers_plus_two_moe_layers(tmp_path):
    from transformers import DeepseekV3Config

    DeepseekV3Config(vocab_size=1000, hidden_size=256, num_hidden_layers=12, first_k_dense_replace=3,
                     num_attention_heads=8, num_key_value_heads=8).save_pretrained(tmp_path)
    config, _ = smoke.tiny_config(str(tmp_path), 50)
    assert config.num_hidden_layers == 5 and config.first_k_dense_replace == 3
    assert config.n_routed_experts == 8 and config.hidden_size == 64


@pytest.fixture(scope="module")
def reward_func():
    namespace = {}
    exec(smoke.BUILTIN_REWARD, namespace)  # noqa: S102 - the reward file the smoke test writes
    return namespace["reward_func"]


def test_builtin_reward_is_one_for_the_label_letter_and_falls_with_distance(reward_func):
    prompts = ["Repeat the letter a: "] * 4
    responses = ["aaaa</s>", "b", "z", "aaz"]
    out = reward_func([p + r for p, r in zip(prompts, responses)], prompts, ["a"] * 4)
    rewards = out["rewards"].double()
    expected = torch.tensor([1.0, 1 - 1 / 94, 1 - 25 / 94, (2 + 1 - 25 / 94) / 3], dtype=torch.float64)
    assert torch.allclose(rewards, expected, atol=1e-6)
    assert torch.equal(out["scores"], out["rewards"])


def test_builtin_reward_is_clamped_to_zero_one_and_handles_words_and_empty_responses(reward_func):
    out = reward_func(["p" + "\x00\x00", "p", "p the cat", "p dog"], ["p"] * 4, ["~", "a", "cat", "cat"])
    assert out["rewards"].tolist() == [0.0, 0.0, 1.0, 0.0]


def _write_events(logdir, rows):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    for step, values in rows.items():
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
    writer.close()


def test_read_steps_returns_train_scalars_by_step_from_the_newest_run(tmp_path):
    _write_events(tmp_path / "old", {1: {"train/reward": 9.0}})
    os.utime(tmp_path / "old", (1, 1))
    _write_events(tmp_path / "new", {2: {"train/reward": 0.5, "train/policy_loss": -0.25, "eval/acc": 1.0},
                                     1: {"train/reward": 0.25}})
    rows = smoke.read_steps(str(tmp_path))
    assert rows == [{"step": 1, "reward": 0.25}, {"step": 2, "reward": 0.5, "policy_loss": -0.25}]
    assert smoke.read_steps(str(tmp_path), "old") == [{"step": 1, "reward": 9.0}]
    assert smoke.read_steps(str(tmp_path / "absent")) == []


def test_warnings_flag_missing_steps_and_non_finite_values():
    rows = [{"step": 1, "reward": 0.5}, {"step": 2, "reward": math.nan, "policy_loss": math.inf}]
    assert smoke.warnings_of(rows, 3) == ["2 of 3 steps logged", "step 2: non-finite policy_loss, reward"]
    assert smoke.warnings_of(rows[:1], 1) == []


def test_summary_has_one_table_line_per_step_and_lists_warnings():
    rows = [{"step": 1, "reward": 0.5, "policy_loss": 0.1}, {"step": 2, "reward": 0.75}]
    text = smoke.summary_text(rows, 12.34, ["note one"], ["w1"])
    lines = text.splitlines()
    assert lines[0] == "smoke test: 2 step(s) in 12.3 s on the CPU"
    assert "  note one" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["step"])
    assert lines[header].split() == ["step", "reward", "policy_loss"]
    assert [line.split() for line in lines[header + 1:header + 3]] == [["1", "0.5", "0.1"], ["2", "0.75", "-"]]
    assert lines[-1] == "  warning: w1"
    assert smoke.summary_text([], 1.0, [], []).splitlines()[-1] == "  warnings: none"


def test_char_tokenizer_round_trips_printable_text_and_has_eos():
    tok = smoke.char_tokenizer()
    text = "Repeat the letter q: ~{}\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.eos_token == "</s>" and tok.pad_token_id == 0
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "user: hi\nassistant: "


def test_drop_and_set_flag_remove_every_value_of_a_flag():
    argv = ["--a", "1", "2", "--b", "--a=3", "--c", "x"]
    assert smoke.drop_flag(argv, "--a") == ["--b", "--c", "x"]
    assert smoke.set_flag(argv, "--c", 5) == ["--a", "1", "2", "--b", "--a=3", "--c", "5"]

"""Upstream's real ``train_ppo_ray`` on the CPU backend, end to end (see conftest.py).

Each case is one ``--smoke_test`` run (Ray, DeepSpeed ZeRO on gloo, the stand-in engine) asserted
from what it logged. Dense cases use two DP ranks (the smoke test's default for a multi-GPU
command line), so every metric passes upstream's all-reduce across ranks.
"""

import json
import math
import os
import re
import warnings

import pytest

from smoke_runs import BASE, DSV3, MOE, REPO

pytestmark = pytest.mark.e2e


def finite(steps, names):
    for row in steps:
        for name in names:
            assert name in row, f"step {row['step']} logged no {name}: {sorted(row)}"
            assert math.isfinite(row[name]), f"step {row['step']}: {name} = {row[name]}"


def test_match_rollout_sampling_gives_pi_old_the_rollout_truncation_in_the_ray_actor(smoke):
    """Engine mismatch off, top_p 0.9: the old-log-prob forward in the PolicyModelActor uses the same
    truncation as the training forward, so the first, pre-update step's ppo_kl is 0 and rho is 1
    (before the fix the forward patch landed on Ray's ActorClass handle: pi_old was full-vocabulary)."""
    run = smoke("--config", "configs/tis.yaml", "--match_rollout_sampling", "--rollout.top_p", "0.9",
                "--smoke_mismatch", "none").ok()
    first = run.steps[0]
    assert abs(first["ppo_kl"]) < 1e-5
    assert first["sampling/excluded_token_frac"] == 0.0
    assert abs(first["is/weight_max"] - 1.0) < 1e-5
    # Upstream always samples with min_tokens=1, so the engine's first token is drawn with the stop
    # tokens masked; the trainer does not replay that mask: k1 is the stop-token mass there, small.
    assert 0.0 <= first["mismatch/k1"] < 5e-3
    assert len(run.steps) == 2


NAN_FIRST_STEP = "probability tensor contains either `inf`, `nan` or element < 0"


def test_quickstart_command_line_with_the_trm_preset_runs_and_prints_the_summary(smoke, tmp_path):
    """The README's GPU quickstart flags + configs/trm.yaml + --smoke_test 2: exit 0, the summary,
    one JSON line last, and every metric the step logs finite."""
    quickstart = [
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "8", "--ref.num_nodes", "1",
        "--ref.num_gpus_per_node", "8", "--vllm.num_engines", "8", "--vllm.tensor_parallel_size", "1",
        "--vllm.gpu_memory_utilization", "0.6", "--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep",
        "--ds.zero_stage", "3", "--ds.param_dtype", "bf16", "--actor.gradient_checkpointing_enable",
        "--ds.packing_samples", "--reward.remote_url", "examples/scripts/reward_math.py",
        "--data.prompt_dataset", "zhuzilin/dapo-math-17k", "--data.input_key", "prompt", "--data.label_key", "label",
        "--data.apply_chat_template", "--data.max_len", "4096", "--rollout.max_new_tokens", "3072",
        "--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "8",
        "--rollout.batch_size", "128", "--rollout.micro_batch_size", "16", "--train.batch_size", "256",
        "--train.micro_batch_size", "4", "--actor.adam.lr", "1e-6", "--algo.kl.init_coef", "0",
        "--logger.wandb.key", "not-a-real-key", "--logger.wandb.project", "openrlhf_offpolicy",
        "--config", "configs/trm.yaml"]
    run = smoke(*quickstart, model="Qwen/Qwen2.5-Math-1.5B", base=[], workdir=tmp_path / "first")
    if run.returncode != 0 and NAN_FIRST_STEP in run.stdout + run.stderr:
        # Known and not yet explained: in about 2 of 10 runs on a 2-core CPU, ZeRO-3 on gloo (this case
        # only) gives an all-NaN first training step and the broadcast NaN weights stop the engine. Not
        # Ray's zero-copy tensors (off in CPU runs since, and seen again). One more run, reported.
        warnings.warn(f"quickstart: NaN weights in the first run, running it again:\n{run.tail(15)}")
        run = smoke(*quickstart, model="Qwen/Qwen2.5-Math-1.5B", base=[], workdir=tmp_path / "second")
    run.ok()
    assert "smoke test: 2 step(s)" in run.stdout
    assert run.stdout.strip().splitlines()[-1].startswith('{"steps": ')
    assert "not-a-real-key" not in run.stdout + run.stderr
    # No worker received a tensor aliasing the object store's shared memory (Ray warns when it sends one).
    assert "Zero-copy tensor serialization is enabled" not in run.stdout + run.stderr
    finite(run.steps, ["policy_loss", "ppo_kl", "mismatch/k3", "trm/accept_rate", "actor_grad_norm"])


def test_qwen3_moe_r3_replays_the_engines_routing(smoke):
    """All-MoE Qwen3: the engines' routed experts replayed in the old-log-prob and training forwards
    (token-level masking correction, icepop)."""
    run = smoke("--routing_replay", "r3", "--config", "configs/icepop.yaml", model=MOE).ok()
    finite(run.steps, ["policy_loss", "routing/flip_rate"])


def test_deepseek_v3_with_a_dense_first_layer_r3_maps_rows_by_decoder_layer(smoke):
    """DeepSeek-V3 style (first_k_dense_replace=1): vLLM's rows are indexed by decoder layer, dense
    rows included; before the fix the first old-log-prob forward raised RoutingReplayError."""
    run = smoke("--routing_replay", "r3", "--policy_loss_type", "gmpo", "--enable_vllm_is_correction",
                "--vllm_is_correction_type", "seq-tis", model=DSV3).ok()
    finite(run.steps, ["policy_loss", "routing/flip_rate"])


@pytest.mark.parametrize("model,flags", [
    (MOE, ["--config", "configs/kl_cov.yaml", "--enable_vllm_is_correction", "--vllm_is_correction_type",
           "segment-tis"]),
    (DSV3, ["--config", "configs/vespo.yaml", "--enable_vllm_is_correction", "--vllm_is_correction_type",
            "reinforce_pro"]),
], ids=["qwen3_moe-kl_cov-segment_tis", "deepseek_v3-vespo-reinforce_pro"])
def test_r2_records_routing_in_the_old_forward_on_both_moe_models(smoke, model, flags):
    run = smoke("--routing_replay", "r2", *flags, model=model).ok()
    finite(run.steps, ["policy_loss", "is/weight_mean"])


def readme_panel_metrics():
    """The ``train/...`` metrics of the README's panel table (first column, in backticks)."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    table = text[text.index("| panel (`train/...`)"):].split("\n\n")[0]
    names = set()
    for row in table.splitlines()[2:]:
        names.update(re.findall(r"`([a-z_0-9/]+)`", row.split("|")[1]))
    return names


def test_async_max_staleness_keeps_two_ranks_in_lockstep_and_logs_every_readme_metric(smoke):
    """Async training, --max_staleness 0 and a generate batch larger than the rollout batch: samples
    are dropped, and the two DP ranks still run the same number of micro-steps (before the lockstep
    fix, unequal micro-step counts paired the per-window all-reduces wrongly). The TensorBoard log
    holds every metric the README's panel table lists."""
    run = smoke("--train.async_enable", "--max_staleness", "0", "--rollout.vllm_generate_batch_size", "4",
                "--config", "configs/trm.yaml", "--rejection", "token_k1:-0.2:0.2", steps=3).ok()
    finite(run.steps, ["policy_loss", "staleness/mean"])
    assert max(row.get("staleness/dropped_frac", 0.0) for row in run.steps) > 0.0
    logged = set().union(*(row.keys() for row in run.steps))
    wanted = readme_panel_metrics()
    assert len(wanted) >= 12
    assert wanted <= logged, f"the README lists metrics the run did not log: {sorted(wanted - logged)}"


def test_a3po_async_on_two_ranks_takes_alpha_from_the_policy_versions(smoke):
    """A-3PO in bypass (no old-log-prob forward), async, alpha per sample from the recorded policy
    versions: (v_prox - v_behave) / (v_theta - v_behave), in [0, 1]."""
    run = smoke("--train.async_enable", "--config", "configs/a3po.yaml", "--a3po_alpha", "versions", steps=3).ok()
    finite(run.steps, ["policy_loss", "a3po/alpha", "a3po/behave_masked_frac", "staleness/mean"])
    assert all(0.0 <= row["a3po/alpha"] <= 1.0 for row in run.steps)


def test_a_two_turn_agent_with_segment_tis_logs_the_mismatch_of_each_turn(smoke):
    """Upstream's MultiTurnAgentExecutor (examples/agents/two_turn_retry.py): two action segments per
    episode, each weighted by its own geometric-mean ratio; the mismatch is split by turn."""
    run = smoke("--train.agent_func_path", "examples/agents/two_turn_retry.py", "--enable_vllm_is_correction",
                "--vllm_is_correction_type", "segment-tis").ok()
    assert "reward: the agent's" in run.stdout
    finite(run.steps, ["policy_loss", "is/weight_mean", "mismatch/k3_turn1", "mismatch/k3_turn2"])


def test_bypass_with_trm_on_the_current_policy_topr_reinforce_max_and_fp16(smoke):
    """--bypass_old_logprobs (pi_old := pi_roll, no old-log-prob forward) with TRM gating pi_roll
    against pi_theta, the TOPR loss, reinforce_max advantages, and fp16 trainer and engines
    (--vllm_dtype float16 needs the trainer's --ds.param_dtype fp16: the broadcast does not cast).
    On a CPU without fp16 kernels (DeepSpeed refuses fp16 there) both run bf16, with a note."""
    from openrlhf_offpolicy.integration.driver.smoke import cpu_fp16_supported

    run = smoke("--bypass_old_logprobs", "--enable_vllm_is_correction", "--vllm_is_correction_type", "trm",
                "--trm_reference", "current", "--policy_loss_type", "topr", "--vllm_dtype", "float16",
                "--ds.param_dtype", "fp16",
                base=_base_without_estimator() + ["--algo.advantage.estimator", "reinforce_max"]).ok()
    finite(run.steps, ["policy_loss", "trm/accept_rate"])
    assert ("--ds.param_dtype fp16 runs as bf16" in run.stderr) == (not cpu_fp16_supported())


def test_topk_kl_trust_region_with_sapo_gets_the_engines_top_k_log_probs(smoke):
    run = smoke("--vllm_logprobs_topk", "4", "--policy_loss_type", "sapo", "--enable_vllm_is_correction",
                "--vllm_is_correction_type", "trm", "--trm_divergence", "topk_kl", "--trm_reference", "current",
                "--trm_max_delta", "0.05").ok()
    finite(run.steps, ["policy_loss", "trm/accept_rate"])


def test_users_setup_hook_runs_after_ours_in_every_worker(smoke, tmp_path):
    marks = tmp_path / "hook"
    marks.mkdir()
    job = {"runtime_env": {"worker_process_setup_hook": "user_hook.setup"}}
    here = os.path.dirname(os.path.abspath(__file__))
    run = smoke("--config", "configs/luspo.yaml", env={
        "E2E_USER_HOOK_DIR": str(marks), "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job),
        "PYTHONPATH": here}).ok()
    ran = list(marks.iterdir())
    assert len(ran) >= 3, "the user's hook must run in the policy ranks and the engine"
    assert all(p.read_text() == "cpu" for p in ran)
    finite(run.steps, ["policy_loss"])


def test_checkpoint_resume_continues_the_policy_version(smoke, tmp_path):
    ckpt = tmp_path / "ckpt"
    flags = ["--config", "configs/cispo.yaml", "--ckpt.path", str(ckpt), "--ckpt.save_steps", "1",
             "--ckpt.load_enable"]
    first = smoke(*flags, steps=2, workdir=tmp_path / "a").ok()
    second = smoke(*flags, steps=3, workdir=tmp_path / "b").ok()
    assert [r["step"] for r in first.steps] == [1, 2]
    assert [r["step"] for r in second.steps] == [3]


def _base_without_estimator():
    out, skip = [], False
    for tok in BASE:
        if skip:
            skip = False
            continue
        if tok == "--algo.advantage.estimator":
            skip = True
            continue
        out.append(tok)
    return out

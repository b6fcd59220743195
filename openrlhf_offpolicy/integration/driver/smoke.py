"""``--smoke_test N``: the user's whole configuration, N steps, on this machine's CPU.

It runs upstream's real loop on the CPU backend (``cpu_backend``; engines: ``standin_engine``)
with the user's command line, every flag kept but for what a CPU run must change, each change a
note line:

* the model: a tiny random model of the same architecture. A local model's ``config.json`` is
  shrunk (layers, widths, experts; dense/MoE layout kept); a hub name gets the built-in tiny config
  of its family (``FAMILIES``, guessed from the name, default ``qwen2``);
* the tokenizer: the model's own when it is on disk (a local directory or the local Hugging Face
  cache, never downloaded), else a built-in character-level one;
* the data: the user's local prompt dataset (its ``--data.input_key`` / ``--data.label_key``),
  else synthetic prompts ("Repeat the letter x: "); the reward: the user's local reward ``.py``,
  else the built-in one (how close the response's characters are to the label letter);
* sizes: a few prompts per step, short responses, at most 2 DP ranks and 2 engines, one episode
  of N steps; weights sync over gloo; no packing, ring attention or flash-attention; no wandb
  (TensorBoard logs instead, in the smoke directory unless ``--logger.tensorboard_dir`` is given).

It ends with a one-screen summary (steps, wall time, key metrics per step, warnings) and, as the
last stdout line, one JSON object ``{"steps": [{metric: value, ...}, ...], "wall_s": ...}``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

# Key metrics of the summary table, in order (TensorBoard names without "train/").
SUMMARY_METRICS = ("reward", "policy_loss", "ppo_kl", "ppo_clip_ratio", "mismatch/k3", "is/ess",
                   "rejection/masked_frac", "routing/flip_rate", "staleness/mean", "actor_grad_norm")
SMOKE_PROMPTS_PER_STEP = 4
SMOKE_MAX_NEW_TOKENS = 12
SMOKE_MAX_LEN = 48
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Built-in tiny configs by family (model_type -> config keywords); vocab size comes from the tokenizer.
_ATTENTION = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, max_position_embeddings=128, tie_word_embeddings=True)
FAMILIES: Dict[str, dict] = {
    "qwen2": dict(_ATTENTION, num_hidden_layers=2),
    "qwen3": dict(_ATTENTION, num_hidden_layers=2),
    "llama": dict(_ATTENTION, num_hidden_layers=2),
    "qwen3_moe": dict(_ATTENTION, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True),
    "mixtral": dict(_ATTENTION, num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2),
    "deepseek_v3": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                        moe_intermediate_size=32, num_hidden_layers=3, first_k_dense_replace=1,
                        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
                        q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                        v_head_dim=16, max_position_embeddings=128, tie_word_embeddings=True),
}
# Keys a local config is shrunk to, where it has them.
SHRINK = {
    "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8, "num_local_experts": 8, "n_routed_experts": 8,
    "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16,
    "q_lora_rank": None, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "shared_expert_intermediate_size": 32, "max_position_embeddings": 128, "max_window_layers": 2,
    "sliding_window": None, "use_sliding_window": False, "layer_types": None,
}


def guess_family(name: str) -> Tuple[str, str]:
    """(model_type, how it was chosen) for a hub model name."""
    lower = name.lower()
    moe = any(tag in lower for tag in ("moe", "-a3b", "-a22b", "-a2.7b", "a30b", "a235b"))
    tail = lower.split("distill", 1)[1] if "distill" in lower else ""
    if any(family in tail for family in ("qwen", "llama", "mixtral", "deepseek")):
        lower = tail  # DeepSeek-R1-Distill-Qwen/-Llama: dense models of the base named after "Distill"
    if "deepseek" in lower and ("v3" in lower or "r1" in lower or "v3.2" in lower):
        return "deepseek_v3", "DeepSeek-V3 family"
    if "mixtral" in lower:
        return "mixtral", "Mixtral family"
    if "qwen3" in lower:
        return ("qwen3_moe", "Qwen3-MoE family") if moe else ("qwen3", "Qwen3 family")
    if "qwen" in lower:
        return "qwen2", "Qwen2 family"
    if "llama" in lower:
        return "llama", "Llama family"
    return "qwen2", "unknown family: a tiny Qwen2"


@dataclass
class SmokeRun:
    """What ``prepare`` decided: the rewritten upstream argv and what it changed."""

    argv: List[str]
    workdir: str
    tensorboard_dir: str
    notes: List[str] = field(default_factory=list)
    bf16_for_fp16: bool = False  # this CPU has no fp16 kernels: trainer and engines run bf16 instead


# --------------------------------------------------------------------------- argv editing
def _flag_spans(argv: Sequence[str], flag: str) -> List[Tuple[int, int]]:
    spans, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok == flag or tok.startswith(flag + "="):
            j = i + 1
            if tok == flag:
                while j < len(argv) and not argv[j].startswith("--"):
                    j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


def drop_flag(argv: List[str], flag: str) -> List[str]:
    out = list(argv)
    for start, end in reversed(_flag_spans(out, flag)):
        del out[start:end]
    return out


def set_flag(argv: List[str], flag: str, *values) -> List[str]:
    return drop_flag(argv, flag) + [flag, *map(str, values)]


# --------------------------------------------------------------------------- assets
def build_tokenizer(name: str, workdir: str):
    """(tokenizer, note): the model's own on disk, else a built-in character-level one."""
    from transformers import AutoTokenizer

    if os.path.isdir(name):
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=True), f"tokenizer: the model's own ({name})"
        except (OSError, ValueError):
            pass
    else:
        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=True)
            return tok, f"tokenizer: {name}'s own, from the local Hugging Face cache"
        except (OSError, ValueError):
            pass
    return char_tokenizer(), "tokenizer: built-in character-level (the model's own is not on disk)"


def char_tokenizer():
    """A character-level tokenizer: printable ASCII plus <pad>, <unk>, <s>, </s>, with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant: {% endif %}")
    return fast


def tiny_config(name: str, vocab_size: int):
    """(config, note): the local config shrunk, or the family's built-in tiny config."""
    from transformers import AutoConfig

    if os.path.isfile(os.path.join(name, "config.json")):
        config = AutoConfig.from_pretrained(name, trust_remote_code=True)
        layers = min(getattr(config, "num_hidden_layers", 2), 2 + int(getattr(config, "first_k_dense_replace", 0)
                                                                          or 0))
        updates = {k: v for k, v in SHRINK.items() if hasattr(config, k)}
        updates["num_hidden_layers"] = max(layers, 2)
        if getattr(config, "mlp_only_layers", None):
            updates["mlp_only_layers"] = [i for i in config.mlp_only_layers if i < updates["num_hidden_layers"]]
        for key, value in updates.items():
            setattr(config, key, value)
        note = f"model: {config.model_type} from {name}/config.json, shrunk to {updates['num_hidden_layers']} layers"
    else:
        model_type, how = guess_family(name)
        config = AutoConfig.for_model(model_type, **FAMILIES[model_type])
        note = f"model: built-in tiny {model_type} ({how} of {name!r})"
    config.vocab_size = vocab_size
    return config, note


def build_model(name: str, tokenizer, directory: str, seed: int) -> str:
    """Save a tiny random model of ``name``'s architecture with ``tokenizer`` to ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM

    config, note = tiny_config(name, len(tokenizer))
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return note


def build_dataset(path: str, input_key: str, label_key: str, n: int, seed: int) -> None:
    """Synthetic prompts "Repeat the letter x: " with the letter as label, one JSON object a line."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            letter = rng.choice(LETTERS)
            f.write(json.dumps({input_key: f"Repeat the letter {letter}: ", label_key: letter}) + "\n")


BUILTIN_REWARD = '''"""Built-in smoke-test reward: how close the response's characters are to the label letter.

Per character c of the response (stop and pad tokens removed): 1 - |ord(c) - ord(label)| / 94, the
distance over printable ASCII; the reward is its mean (0 for an empty response). Dense, so a tiny
random model gets a learning signal at once; a label longer than one character: 1 if it appears.
"""
import torch


def reward_func(queries, prompts, labels):
    rewards = []
    for query, prompt, label in zip(queries, prompts, labels):
        response = query[len(prompt):] if query.startswith(prompt) else query
        response = response.replace("</s>", "").replace("<pad>", "")
        label = str(label or "")
        if len(label) == 1:
            rewards.append(sum(1 - abs(ord(c) - ord(label)) / 94 for c in response) / max(len(response), 1))
        else:
            rewards.append(float(bool(label) and label in response))
    rewards = torch.tensor(rewards, dtype=torch.float).clamp(0, 1)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {}}
'''


# --------------------------------------------------------------------------- the command line
def prepare(upstream_argv: Sequence[str], steps: int, workdir: str) -> SmokeRun:
    """The user's upstream argv rewritten for a CPU run of ``steps`` steps, and its assets built."""
    from .upstream_source import upstream_parser

    flat = vars(upstream_parser().parse_known_args(list(upstream_argv))[0])
    given = {tok.split("=", 1)[0] for tok in upstream_argv if tok.startswith("--")}
    argv, notes = list(upstream_argv), []
    seed = flat.get("train.seed") or 42

    # model and tokenizer
    name = flat["actor.model_name_or_path"]
    tokenizer, tok_note = build_tokenizer(name, workdir)
    model_dir = os.path.join(workdir, "model")
    notes += [build_model(name, tokenizer, model_dir, seed), tok_note]
    argv = set_flag(argv, "--actor.model_name_or_path", model_dir)
    if flat.get("critic.model_name_or_path"):
        argv = set_flag(argv, "--critic.model_name_or_path", model_dir)
        notes.append("critic: the tiny model")

    # data and reward
    input_key, label_key = flat.get("data.input_key") or "input", flat.get("data.label_key") or "label"
    dataset = flat.get("data.prompt_dataset")
    n_samples = max(1, min(flat.get("rollout.n_samples_per_prompt") or 1, 4))
    prompts = 2 if n_samples >= 4 else SMOKE_PROMPTS_PER_STEP
    ratio = max(1, (flat.get("rollout.vllm_generate_batch_size") or 0) // max(flat.get("rollout.batch_size") or 1,
                                                                             1))
    if dataset and os.path.exists(dataset):
        notes.append(f"data: {dataset}")
    else:
        dataset = os.path.join(workdir, "prompts.jsonl")
        build_dataset(dataset, input_key, label_key, prompts * steps * ratio + 8, seed)
        missing = f" (not on disk: {flat['data.prompt_dataset']})" if flat.get("data.prompt_dataset") else ""
        notes.append("data: synthetic prompts 'Repeat the letter x: '" + missing)
        argv = set_flag(argv, "--data.label_key", label_key)
    argv = set_flag(argv, "--data.prompt_dataset", dataset)
    argv = set_flag(argv, "--data.input_key", input_key)
    for flag in ("--eval.dataset", "--data.prompt_probs", "--data.prompt_split"):
        argv = drop_flag(argv, flag)
    reward = flat.get("reward.remote_url")
    agent = flat.get("train.agent_func_path")
    if agent:  # upstream's agent executor: the agent's step gives the rewards
        argv = set_flag(argv, "--train.agent_func_path", os.path.abspath(agent))  # the engine's cwd may differ
        notes.append(f"reward: the agent's ({agent})")
    elif not (reward and reward.endswith(".py") and os.path.isfile(reward)):
        reward = os.path.join(workdir, "reward.py")
        with open(reward, "w") as f:
            f.write(BUILTIN_REWARD)
        notes.append("reward: built-in (closeness of the response characters to the label letter)")
        argv = drop_flag(argv, "--reward.model_name_or_path")
    if not agent:
        argv = set_flag(argv, "--reward.remote_url", reward)

    # sizes: a few prompts, short responses, <= 2 ranks and engines, N steps of one episode
    dp = max(1, min(flat.get("actor.num_gpus_per_node") or 1, 2))
    engines = max(1, min(flat.get("vllm.num_engines") or 1, 2))
    samples = prompts * n_samples
    micro = max(1, samples // (dp * 2))
    sizes = {
        "--actor.num_nodes": 1, "--actor.num_gpus_per_node": dp, "--ref.num_nodes": 1, "--ref.num_gpus_per_node": dp,
        "--vllm.num_engines": engines, "--vllm.tensor_parallel_size": 1, "--rollout.n_samples_per_prompt": n_samples,
        "--rollout.batch_size": prompts, "--train.batch_size": samples, "--train.micro_batch_size": micro,
        "--rollout.micro_batch_size": micro, "--rollout.max_new_tokens": SMOKE_MAX_NEW_TOKENS,
        "--data.max_len": SMOKE_MAX_LEN, "--train.num_episodes": 1, "--data.max_samples": prompts * steps * ratio,
        "--vllm.sync_backend": "gloo", "--ds.attn_implementation": "eager", "--ds.ring_attn_size": 1,
        "--ds.tensor_parallel_size": 1, "--data.dataloader_num_workers": 0,
    }
    if "--rollout.vllm_generate_batch_size" in given:
        sizes["--rollout.vllm_generate_batch_size"] = prompts * ratio
    for flag, value in sizes.items():
        argv = set_flag(argv, flag, value)
    notes.append(f"sizes: {steps} steps of {prompts} prompts x {n_samples} samples, {SMOKE_MAX_NEW_TOKENS} new tokens, "
                 f"{dp} DP rank(s), {engines} engine(s)")
    for flag, why in (("--ds.packing_samples", "needs flash-attn"), ("--ds.enable_sleep", "GPU memory offload"),
                      ("--vllm.enable_sleep", "GPU memory offload"), ("--ds.use_liger_kernel", "CUDA kernels"),
                      ("--ds.load_in_4bit", "CUDA kernels"), ("--train.dynamic_batch_enable", "needs packing")):
        if flag in given:
            argv = drop_flag(argv, flag)
            notes.append(f"dropped {flag} ({why})")

    bf16_for_fp16 = flat.get("ds.param_dtype") == "fp16" and not cpu_fp16_supported()
    if bf16_for_fp16:
        argv = set_flag(argv, "--ds.param_dtype", "bf16")
        notes.append("--ds.param_dtype fp16 runs as bf16, and fp16 engines as bf16 (this CPU has no fp16 kernels: "
                     "DeepSpeed refuses fp16 on it)")

    # logs and checkpoints stay in the smoke directory unless given
    for flag in ("--logger.wandb.key", "--logger.wandb.org", "--logger.wandb.project", "--logger.wandb.group"):
        if flag in given:
            argv = drop_flag(argv, flag)
            notes.append(f"dropped {flag} (the smoke test logs to TensorBoard)")
    tensorboard = flat.get("logger.tensorboard_dir") or os.path.join(workdir, "tensorboard")
    argv = set_flag(argv, "--logger.tensorboard_dir", tensorboard)
    for flag, sub in (("--ckpt.output_dir", "output"), ("--ckpt.path", "checkpoints")):
        if flag not in given:
            argv = set_flag(argv, flag, os.path.join(workdir, sub))
    return SmokeRun(argv=argv, workdir=workdir, tensorboard_dir=tensorboard, notes=notes, bf16_for_fp16=bf16_for_fp16)


def cpu_fp16_supported() -> bool:
    """Whether DeepSpeed's CPU accelerator takes fp16 on this machine: it asks oneDNN for fp16 kernels
    (``is_fp16_supported``: CPUs with AVX512-FP16 or AMX-FP16), and refuses fp16 engines otherwise."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except Exception:  # an older torch without the probe: DeepSpeed then refuses fp16 too
        return False


# --------------------------------------------------------------------------- results
def read_steps(tensorboard_dir: str, run_name: Optional[str] = None) -> List[Dict[str, float]]:
    """Every ``train/*`` scalar of the run, one dict per global step (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [os.path.join(tensorboard_dir, d) for d in sorted(os.listdir(tensorboard_dir))] if os.path.isdir(
        tensorboard_dir) else []
    if run_name is not None:
        runs = [r for r in runs if os.path.basename(r) == run_name] or runs
    if not runs:
        return []
    acc = EventAccumulator(max(runs, key=os.path.getmtime), size_guidance={"scalars": 0})
    acc.Reload()
    by_step: Dict[int, Dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        if not tag.startswith("train/"):
            continue
        for event in acc.Scalars(tag):
            by_step.setdefault(event.step, {"step": event.step})[tag[len("train/"):]] = event.value
    return [by_step[s] for s in sorted(by_step)]


def warnings_of(steps: List[Dict[str, float]], expected: int) -> List[str]:
    out = []
    if len(steps) < expected:
        out.append(f"{len(steps)} of {expected} steps logged")
    for row in steps:
        bad = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            out.append(f"step {row['step']}: non-finite {', '.join(bad)}")
    return out


def summary_text(steps: List[Dict[str, float]], wall_s: float, notes: List[str], warnings: List[str]) -> str:
    columns = [m for m in SUMMARY_METRICS if any(m in row for row in steps)]
    lines = [f"smoke test: {len(steps)} step(s) in {wall_s:.1f} s on the CPU"]
    lines += [f"  {note}" for note in notes]
    header = ["step", *columns]
    table = [[str(int(row["step"]))] + [f"{row[m]:.4g}" if m in row else "-" for m in columns] for row in steps]
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(header)]
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table]
    lines += [f"  warning: {w}" for w in warnings] or ["  warnings: none"]
    return "\n".join(lines)


def run(upstream_argv: Sequence[str], settings, steps: int, mismatch: str, mismatch_scale: Optional[float],
        workdir: Optional[str], prog: str) -> int:
    """Run ``steps`` steps of the configuration on the CPU; print the summary and the JSON line."""
    from ..runtime import cpu_backend
    from . import launch
    from ..runtime.upstream_args import given_flags

    started = time.time()
    workdir = workdir or tempfile.mkdtemp(prefix="openrlhf_offpolicy_smoke_")
    os.makedirs(workdir, exist_ok=True)
    smoke = prepare(upstream_argv, steps, workdir)
    for note in smoke.notes:
        print(f"train_ppo_ray: smoke test: {note}", file=sys.stderr)
    os.environ.update(cpu_backend.WORKER_ENV)
    settings = replace(settings, cpu_backend=True, smoke_mismatch=mismatch, smoke_mismatch_scale=mismatch_scale)
    if smoke.bf16_for_fp16 and settings.vllm_dtype == "float16":
        settings = replace(settings, vllm_dtype="bfloat16", engine_dtype="bfloat16")
    args, _, _ = launch.run(smoke.argv, settings, explicit_flags=given_flags(smoke.argv), prog=prog)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    wall_s = time.time() - started
    rows = read_steps(smoke.tensorboard_dir, getattr(getattr(args, "logger", None), "wandb", None)
                      and args.logger.wandb.run_name)
    warnings = warnings_of(rows, steps)
    sys.stdout.flush()
    print(summary_text(rows, wall_s, smoke.notes, warnings))
    print(json.dumps({"steps": rows, "wall_s": round(wall_s, 2), "workdir": workdir,
                      "tensorboard_dir": smoke.tensorboard_dir, "warnings": warnings}))
    return 0

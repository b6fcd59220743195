"""The seed fork's OpenRLHF 0.9.x flat flags (``--pretrain``, ``--micro_train_batch_size``, ...),
translated to OpenRLHF 0.11.2's dotted flags.

The table has three parts:
  * ``legacy_flags.json``, derived from both parsers by ``derive`` (regenerate with
    ``python -m openrlhf_offpolicy.cli.legacy_flags_table PATH/TO/0.9.10/openrlhf/cli/train_ppo_ray.py``
    after ``pip download --no-deps openrlhf==0.9.10`` and unpacking the wheel): a 0.9.x flag maps to
    the 0.11.2 flag of the same name with dots for underscores (``--vllm_num_engines`` ->
    ``--vllm.num_engines``), or else to the one 0.11.2 flag whose name ends in it
    (``--zero_stage`` -> ``--ds.zero_stage``), or to the actor's and the critic's flag when 0.9.x had
    one flag for both (``--lr_scheduler``); only when both take the same number and type of values.
    The file also records every 0.9.10 flag's signature, so the test re-derives the table against
    the installed 0.11.2 parser without the 0.9.10 wheel.
  * ``RENAMED``: the hand table for options 0.11.2 renamed;
  * ``NO_EQUIVALENT``: 0.9.x flags 0.11.2 dropped, with the closest replacement.
Flags that 0.11.2 (or this project) accepts under the same name are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_flags.json")

RENAMED: Dict[str, List[str]] = {
    "--pretrain": ["--actor.model_name_or_path"],
    "--reward_pretrain": ["--reward.model_name_or_path"],
    "--critic_pretrain": ["--critic.model_name_or_path"],
    "--remote_rm_url": ["--reward.remote_url"],
    "--prompt_data": ["--data.prompt_dataset"],
    "--prompt_data_probs": ["--data.prompt_probs"],
    "--micro_train_batch_size": ["--train.micro_batch_size"],
    "--micro_rollout_batch_size": ["--rollout.micro_batch_size"],
    "--n_samples_per_prompt": ["--rollout.n_samples_per_prompt"],
    "--temperature": ["--rollout.temperature"],
    "--save_path": ["--ckpt.output_dir"],
    "--save_hf_ckpt": ["--ckpt.save_hf"],
    "--disable_ds_ckpt": ["--ckpt.disable_ds"],
    "--max_ckpt_num": ["--ckpt.max_num"],
    "--max_ckpt_mem": ["--ckpt.max_mem"],
    "--load_checkpoint": ["--ckpt.load_enable"],
    "--use_ds_universal_ckpt": ["--ds.use_universal_ckpt"],
    "--gradient_checkpointing": ["--actor.gradient_checkpointing_enable"],
    "--gradient_checkpointing_use_reentrant": ["--actor.gradient_checkpointing_reentrant"],
    "--deepspeed_enable_sleep": ["--ds.enable_sleep"],
    "--colocate_all_models": ["--train.colocate_all"],
    "--async_train": ["--train.async_enable"],
    "--partial_rollout": ["--train.partial_rollout_enable"],
    "--use_dynamic_batch": ["--train.dynamic_batch_enable"],
    "--full_determinism": ["--train.full_determinism_enable"],
    "--normalize_reward": ["--reward.normalize_enable"],
    "--freezing_actor_steps": ["--critic.freezing_steps"],
    "--actor_learning_rate": ["--actor.adam.lr"],
    "--critic_learning_rate": ["--critic.adam.lr"],
    "--l2": ["--actor.adam.weight_decay", "--critic.adam.weight_decay"],
    "--init_kl_coef": ["--algo.kl.init_coef"],
    "--use_kl_loss": ["--algo.kl.use_loss"],
    "--entropy_loss_coef": ["--actor.entropy_coef"],
    "--no_advantage_std_norm": ["--algo.advantage.no_std_norm"],
    "--ring_head_stride": ["--ds.ring_attn_head_stride"],
    "--ref_reward_offload": ["--ref.offload", "--reward.offload"],
    "--use_wandb": ["--logger.wandb.key"],
    "--use_tensorboard": ["--logger.tensorboard_dir"],
    "--dynamic_filtering": ["--algo.dynamic_filtering_enable"],
    "--dynamic_filtering_reward_range": ["--algo.dynamic_filtering_range"],
}

# Older 0.x flags that 0.9.10's parser no longer has but the 0.9.x README still shows.
OLDER_SIGNATURES: Dict[str, str] = {"--generate_max_len": "1:int"}
RENAMED["--generate_max_len"] = ["--rollout.max_new_tokens"]

NO_EQUIVALENT: Dict[str, str] = {
    "--prompt_max_len": "0.11.2 bounds prompt + response together: give --generate_max_len G beside it (translated "
                        "to --data.max_len PROMPT_MAX_LEN+G --rollout.max_new_tokens G) or write --data.max_len "
                        "PROMPT_MAX_LEN+GENERATE_MAX_LEN",
    "--use_icepop": "use --enable_vllm_is_correction --vllm_is_correction_type icepop",
    "--ptx_coef": "0.11.2 has no pretraining (PTX) loss in PPO; drop the flag (closest: a KL anchor, "
                  "--algo.kl.init_coef / --algo.kl.use_loss)",
    "--actor_init_on_gpu": "0.11.2 places the actor through DeepSpeed; drop the flag (closest: --ds.zero_stage)",
    "--perf": "0.11.2 has no --perf switch; its timings are logged with the other metrics "
              "(closest: --logger.tensorboard_dir or --logger.wandb.key)",
}


def signature(action: argparse.Action) -> str:
    """What a flag takes: ``flag`` (no value), or ``NARGS:TYPE`` (``1:int``, ``2:float``, ``*:str``)."""
    if action.nargs == 0:
        return "flag"
    nargs = 1 if action.nargs is None else action.nargs
    kind = getattr(action.type, "__name__", "str") if action.type is not None else "str"
    return f"{nargs}:{kind}"


def signatures(parser: argparse.ArgumentParser) -> Dict[str, str]:
    return {s: signature(a) for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _underscored(flag: str) -> str:
    return flag[2:].replace(".", "_")


def derive(old: Mapping[str, str], new: Mapping[str, str], same_name: Iterable[str] = ()) -> Dict[str, List[str]]:
    """0.9.x flag -> 0.11.2 flags, from the two parsers' signatures (see the module docstring).

    Flags in ``same_name`` (accepted unchanged), ``RENAMED`` and ``NO_EQUIVALENT`` are skipped; a
    flag that matches nothing is returned mapped to ``[]`` (it needs a hand entry).
    """
    keep = set(same_name) | set(new)
    out: Dict[str, List[str]] = {}
    for flag, sig in old.items():
        if flag in keep or flag in RENAMED or flag in NO_EQUIVALENT:
            continue
        name = flag[2:]
        candidates = [g for g in new if _underscored(g) == name]
        if not candidates:
            candidates = [g for g in new if ("_" + _underscored(g)).endswith("_" + name)]
        candidates = sorted(g for g in candidates if new[g] == sig)
        roles = {g[2:].split(".")[0] for g in candidates}
        if len(candidates) == 1 or (len(candidates) == 2 and roles == {"actor", "critic"}):
            out[flag] = candidates
        else:
            out[flag] = []
    return out


def load() -> dict:
    with open(DATA) as f:
        return json.load(f)


def table() -> Dict[str, List[str]]:
    """Every translatable 0.9.x flag -> its 0.11.2 flags (derived, then the hand table)."""
    return {**load()["derived"], **RENAMED}


def _values(tokens: Sequence[str], i: int, sig: str) -> int:
    """How many tokens after ``tokens[i]`` are the values of a flag with signature ``sig``."""
    if sig == "flag":
        return 0
    nargs = sig.split(":")[0]
    if nargs.isdigit():
        return int(nargs)
    n = 0
    while i + 1 + n < len(tokens) and not tokens[i + 1 + n].startswith("--"):
        n += 1
    return n


LENGTH_NOTE = ("0.11.2 bounds prompt + response together and cuts a prompt at max_len - max_new_tokens "
               "= {prompt}, as 0.9.x did")
TOTAL_LENGTH_FLAGS = ("--max_len", "--data.max_len")


def flag_value(tokens: Sequence[str], flag: str) -> Optional[str]:
    """The value of the last ``flag V`` / ``flag=V`` in ``tokens`` (None when absent)."""
    value = None
    for i, tok in enumerate(tokens):
        if tok == flag and i + 1 < len(tokens):
            value = tokens[i + 1]
        elif tok.startswith(flag + "="):
            value = tok.split("=", 1)[1]
    return value


def _prompt_max_len(tokens: Sequence[str], error: Callable[[str], Exception]) -> Optional[List[str]]:
    """What ``--prompt_max_len P`` becomes: ``--data.max_len P+G`` with ``--generate_max_len G``, nothing
    beside an explicit total length (``--max_len``: the 0.9.x fork used it and ignored P), None alone."""
    prompt, generate = flag_value(tokens, "--prompt_max_len"), flag_value(tokens, "--generate_max_len")
    if any(flag_value(tokens, f) is not None for f in TOTAL_LENGTH_FLAGS):
        return []
    if generate is None:
        return None
    try:
        return ["--data.max_len", str(int(prompt) + int(generate))]
    except (TypeError, ValueError):
        raise error(f"--prompt_max_len {prompt} --generate_max_len {generate}: both must be integers") from None


def translate(tokens: Sequence[str], known: Iterable[str], note: Callable[[str], None],
              error: Callable[[str], Exception] = ValueError) -> List[str]:
    """``tokens`` with every 0.9.x flag replaced by its 0.11.2 flags; ``note(line)`` per translation.

    Flags in ``known`` (0.11.2's and ours) are never translated. A 0.9.x flag without an
    equivalent raises ``error(one line naming the closest replacement)``. ``--prompt_max_len P``
    with ``--generate_max_len G`` becomes ``--data.max_len P+G`` (and G ``--rollout.max_new_tokens``):
    0.9.x cut the prompt at P and the response at G, 0.11.2 cuts the prompt at max_len - max_new_tokens.
    """
    known = set(known)
    mapping = table()
    sigs = {**load()["old"], **OLDER_SIGNATURES}
    out: List[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        name, eq, value = tok.partition("=")
        if not tok.startswith("--") or name in known:
            out.append(tok)
            i += 1
            continue
        if name == "--prompt_max_len" and _prompt_max_len(tokens, error) is not None:
            replacement = _prompt_max_len(tokens, error)
            out += replacement
            if replacement:
                prompt, generate = flag_value(tokens, name), flag_value(tokens, "--generate_max_len")
                note(f"OpenRLHF 0.9.x flags --prompt_max_len {prompt} --generate_max_len {generate} are "
                     f"{' '.join(replacement)} --rollout.max_new_tokens {generate} in 0.11.2: "
                     + LENGTH_NOTE.format(prompt=prompt))
            else:
                note("OpenRLHF 0.9.x flag --prompt_max_len is dropped: the total length (--max_len) is given, "
                     "which the 0.9.x fork used instead of it")
            i += 1 if eq else 2
            continue
        if name in NO_EQUIVALENT:
            raise error(f"{name} is an OpenRLHF 0.9.x flag with no 0.11.2 equivalent: {NO_EQUIVALENT[name]}")
        if name not in mapping:
            out.append(tok)
            i += 1
            continue
        targets = mapping[name]
        n = 0 if eq else _values(tokens, i, sigs[name])
        values = tokens[i + 1:i + 1 + n]
        for target in targets:
            out += [f"{target}={value}"] if eq else [target, *values]
        note(f"OpenRLHF 0.9.x flag {name} is {' and '.join(targets)} in 0.11.2 (translated)")
        i += 1 + n
    return out


if __name__ == "__main__":
    raise SystemExit("regenerate the table with: python -m openrlhf_offpolicy.cli.legacy_flags_table "
                     "PATH/TO/0.9.10/openrlhf/cli/train_ppo_ray.py")

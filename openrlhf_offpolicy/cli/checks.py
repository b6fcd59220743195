"""The CLI's fast checks: every bad command line is one line and exit status 2, before anything heavy.

All checks are generic over the flags: ours come from ``build_parser`` (so a flag added there is
covered automatically), upstream's from upstream's own parser read from its source
(``integration.driver.upstream_source``, no upstream module imported):
  * ``check_tokens``: unknown flags (with the nearest valid name), abbreviations (refused for every
    flag, ours and upstream's, so our parse, the peek and upstream's parse always agree), then one
    strict parse with both parsers' actions for wrong value counts, types, choices and NaN;
  * ``check_inputs``: a dry run or a run needs a policy model and a reward;
  * ``check_ppo_clip_flags``: upstream's PPO clip flags under a loss without a PPO clip are an error
    (a method parameter given for a method the run does not use is refused by the library,
    ``corrections.config.check_parameters_are_read``, for the CLI and ``PolicyLoss`` alike).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence

from ..corrections import CORRECTIONS, POLICY_LOSSES, OffPolicyConfig
from ..corrections.config import same_value


class UsageError(ValueError):
    """A bad command line; reported as one line, exit status 2."""


class StrictParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one line
        raise UsageError(message)


# Upstream flags whose valid values this project widens under another flag.
WIDER_FLAG = {"--actor.policy_loss_type": ("--policy_loss_type", POLICY_LOSSES.names)}
# Upstream's PPO-clip flags: read only by losses registered with ppo_clip=True.
CLIP_FLAGS = ("--actor.eps_clip", "--actor.eps_clip_low_high", "--actor.dual_clip")


def option_strings(parser: argparse.ArgumentParser) -> List[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def nearest(name: str, known: Iterable[str]) -> Optional[str]:
    """The closest valid flag: same last segment first (``--num_engines`` -> ``--vllm.num_engines``),
    else the closest spelling."""
    known = list(known)
    leaf = name.lstrip("-").split(".")[-1]
    same_leaf = [k for k in known if k.split(".")[-1].lstrip("-") == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_flag_message(name: str, known: Sequence[str], where: str = "") -> str:
    completions = sorted(k for k in known if k.startswith(name))
    if completions:
        return (f"{where}{name} is an abbreviation, and abbreviations are not accepted: write "
                f"{' or '.join(completions[:3])}{' or ...' if len(completions) > 3 else ''}")
    hint = nearest(name, known)
    return f"{where}unknown flag {name}" + (f"; did you mean {hint}?" if hint else "")


def combined_parser(ours: argparse.ArgumentParser, upstream: argparse.ArgumentParser) -> StrictParser:
    """One strict parser with both parsers' actions (no abbreviations, errors as UsageError)."""
    return StrictParser(parents=[ours, upstream], add_help=False, allow_abbrev=False, conflict_handler="resolve")


def check_tokens(tokens: Sequence[str], ours: argparse.ArgumentParser,
                 upstream: argparse.ArgumentParser) -> argparse.Namespace:
    """Refuse unknown and abbreviated flags and bad values; returns the full parsed namespace."""
    known = option_strings(ours) + option_strings(upstream)
    known_set = set(known)
    for tok in tokens:
        if tok.startswith("--") and not _is_number(tok):
            name = tok.split("=", 1)[0]
            if name not in known_set:
                raise UsageError(unknown_flag_message(name, known))
    parser = combined_parser(ours, upstream)
    try:
        ns, extra = parser.parse_known_args(list(tokens))
    except UsageError as e:
        raise UsageError(_explain(str(e), tokens)) from None
    if extra:
        raise UsageError(_extra_value_message(extra[0], tokens, parser))
    for action in parser._actions:
        value = getattr(ns, action.dest, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and math.isnan(v):
                raise UsageError(f"{action.option_strings[0]}: nan is not a value (must be finite)")
    return ns


def _explain(message: str, tokens: Sequence[str]) -> str:
    for flag, (wider, names) in WIDER_FLAG.items():
        if message.startswith(f"argument {flag}: invalid choice"):
            value = message.split("'")[1]
            if value in names():
                return f"{message}; this project's policy losses are selected with {wider} {value}"
    return message


def _extra_value_message(token: str, tokens: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """``--sapo_tau_pos 1 2``: name the flag that got one value too many."""
    actions = {s: a for a in parser._actions for s in a.option_strings}
    flag, count = None, 0
    for tok in tokens:
        if tok.startswith("--") and not _is_number(tok):
            name, eq, _ = tok.partition("=")
            flag, count = name, (1 if eq else 0)
            continue
        count += 1
        action = actions.get(flag)
        nargs = None if action is None else action.nargs
        limit = {None: 1, "?": 1, 0: 0}.get(nargs, nargs if isinstance(nargs, int) else None)
        if tok == token and (flag is None or (limit is not None and count > limit)):
            if flag is None:
                break
            takes = {0: "no value", 1: "one value"}.get(limit, f"{limit} values")
            return f"{flag} takes {takes}; got the extra value {token!r}"
    return f"unexpected value {token!r} (every value follows its flag)"


def check_inputs(ns: argparse.Namespace) -> None:
    """What any run needs: a policy model and a reward (upstream would fail later, unclearly); a smoke
    test has a built-in reward."""
    get = vars(ns).get
    if not get("actor.model_name_or_path"):
        raise UsageError("no policy model: give --actor.model_name_or_path MODEL (a Hugging Face name or path)")
    has_reward = get("reward.remote_url") or get("reward.model_name_or_path") or get("train.agent_func_path")
    if get("smoke_test") is None and not has_reward:
        raise UsageError("no reward: give --reward.remote_url URL_OR_FILE.py (e.g. examples/scripts/reward_math.py), "
                         "--reward.model_name_or_path MODEL or --train.agent_func_path FILE.py")
    agent = get("train.agent_func_path")
    if agent and not agent.endswith(".py"):  # upstream asserts it in the engine actor, after Ray started
        raise UsageError(f"--train.agent_func_path {agent}: an agent is a Python file (FILE.py)")
    if agent and get("smoke_test") is not None and not os.path.isfile(agent):
        raise UsageError(f"--train.agent_func_path {agent}: no such file (the smoke test loads the agent here)")


def check_ppo_clip_flags(config: OffPolicyConfig, upstream_given: Iterable[str], upstream_values: Dict[str, object],
                         upstream_defaults: Dict[str, object]) -> None:
    """Upstream's PPO clip flags under a loss without a PPO clip. ``upstream_values`` and
    ``upstream_defaults``: upstream's parsed values and defaults by dest (``actor.eps_clip``)."""
    loss = POLICY_LOSSES.get(config.policy_loss_type)
    if loss.meta.get("ppo_clip", False):
        return
    clipped = [n for n in POLICY_LOSSES.names() if POLICY_LOSSES.get(n).meta.get("ppo_clip", False)]
    for flag in CLIP_FLAGS:
        dest = flag[2:]
        if flag in set(upstream_given) and not same_value(upstream_values.get(dest), upstream_defaults.get(dest)):
            raise UsageError(
                f"{flag} sets the PPO clip, which policy loss {config.policy_loss_type} does not have (it is read "
                f"by {', '.join(clipped)}); drop {flag}"
            )


def check_bands(named_bands: Dict[str, Optional[Sequence[float]]]) -> None:
    """An inverted band is an error whether or not its correction is on."""
    for flag, band in named_bands.items():
        if band is not None and len(band) == 2 and band[0] > band[1]:
            raise UsageError(f"{flag} {band[0]:g} {band[1]:g} is inverted: LOW must not exceed HIGH")


def check_correction_apis(values: Dict[str, object]) -> None:
    """Upstream's ``--algo.advantage.is_correction_*`` and our ``--enable_vllm_is_correction`` /
    ``--vllm_is_correction_type`` each select a correction. A type given without our switch names
    the way out that the next check accepts: add the switch, or, when upstream's flags already
    select a correction, keep one of the two APIs (the library refuses two different selections)."""
    from ..corrections.config import UPSTREAM_GATES

    ours = values.get("vllm_is_correction_type")
    if ours is None or values.get("enable_vllm_is_correction"):
        return
    level = values.get("algo.advantage.is_correction_level") or "off"
    if level == "off":
        raise UsageError(f"--vllm_is_correction_type {ours} has no effect without --enable_vllm_is_correction; "
                         "add it")
    key = (level, values.get("algo.advantage.is_correction_mode") or "mask",
           values.get("algo.advantage.is_correction_gating") or "ratio")
    upstream = UPSTREAM_GATES.get(key)
    if upstream is not None and CORRECTIONS.canonical(ours) == upstream:
        raise UsageError(f"--vllm_is_correction_type {ours} repeats what --algo.advantage.is_correction_level "
                         f"{level} already selects (upstream's {upstream}); drop --vllm_is_correction_type, or "
                         "drop --algo.advantage.is_correction_* and add --enable_vllm_is_correction")
    raise UsageError(f"--vllm_is_correction_type {ours} and --algo.advantage.is_correction_level {level} (upstream's "
                     f"{upstream or 'correction'}) are two ways to select a correction; keep one: drop "
                     "--algo.advantage.is_correction_* and add --enable_vllm_is_correction, or drop "
                     "--vllm_is_correction_type")

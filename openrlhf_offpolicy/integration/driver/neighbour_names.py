"""Names from neighbouring tools, mapped to ours with one note, or refused with a line naming ours.

verl 0.9.1 (``algorithm.rollout_correction``, ``verl/trainer/config/algorithm.py`` and
``verl/trainer/ppo/rollout_corr_helper.py``):
  * ``rollout_is`` token | sequence, with ``rollout_is_threshold`` T (a clamp at T: TIS / Seq-TIS) or
    ``"L_U"`` (weights zeroed outside [L, U]: IcePop / Seq-MIS); null: no IS weights;
  * ``rollout_is_batch_normalize``: ``--is_batch_normalize``;
  * ``rollout_rs`` MODE[,MODE] with ``rollout_rs_threshold``: ``--rejection``. verl's ``*_k1`` statistic
    is ``-log r`` kept inside ``[log L, log U]`` of a ratio band ``"L_U"`` (one value U: ``L = 1/U``), so
    ours (``k1 = log rho``, a band in log space) is ``[-log U, -log L]``; k2 / k3 take the same upper bound;
  * ``bypass_mode``: ``--bypass_old_logprobs``.
  verl's flags are accepted as ``--rollout_is token`` or ``--algorithm.rollout_correction.rollout_is token``
  (and as YAML keys). Its preset names (``token_is``, ``seq_is``, ...) are accepted as values of
  ``--vllm_is_correction_type``.
Upstream OpenRLHF 0.11.2's ``--algo.advantage.is_correction_*`` are upstream flags and keep their
meaning; ``cli.checks.check_correction_apis`` says how they and ours combine.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

VERL_PREFIX = "--algorithm.rollout_correction."
VERL_FLAGS = ("--rollout_is", "--rollout_is_threshold", "--rollout_is_batch_normalize", "--rollout_rs",
              "--rollout_rs_threshold", "--bypass_mode")

# Values of --vllm_is_correction_type a user of verl (or of our YAML file names) types -> our correction.
CORRECTION_ALIASES: Dict[str, str] = {
    "token_is": "tis",  # verl decoupled_token_is
    "token_tis": "tis",
    "token_icepop": "icepop",  # verl decoupled_token_icepop
    "seq_is": "seq-tis",  # verl decoupled_seq_is
    "sequence_is": "seq-tis",
    "seq_tis": "seq-tis",
    "seq_mis": "seq-mis",
    "geo_rs": "geo-mask",  # verl decoupled_geo_rs (a pure filter on the geometric-mean ratio)
    "geo_mask": "geo-mask",
    "seq_mask_tis": "seq-mask-tis",
    "prefix_mask": "prefix-mask",
    "tv_mask": "tv-mask",
    "seq_tv_mask": "seq-tv-mask",
    "binary_kl_mask": "binary-kl-mask",
    "seq_binary_kl_mask": "seq-binary-kl-mask",
}

# Values that name a verl option rather than a correction -> what to write here.
CORRECTION_REFUSALS: Dict[str, str] = {
    "rollout_is": "verl's rollout_is is the IS level; here: --enable_vllm_is_correction --vllm_is_correction_type "
                  "tis (token) or seq-tis (sequence), or --rollout_is token|sequence",
    "rollout_rs": "verl's rollout_rs is rejection sampling; here: --rejection CRITERION "
                  "(e.g. seq_mean_k1:-0.001:0.001) or --rollout_rs MODE --rollout_rs_threshold T",
    "token": "'token' is a level, not a correction: --vllm_is_correction_type tis (clamp) or icepop (mask)",
    "sequence": "'sequence' is a level, not a correction: --vllm_is_correction_type seq-tis (clamp) or seq-mis (mask)",
    "seq": "'seq' is a level, not a correction: --vllm_is_correction_type seq-tis (clamp), seq-mis or seq-mask-tis "
           "(mask)",
}


def yaml_keys() -> List[str]:
    """verl's flags as ``--config`` keys (bare and under ``algorithm.rollout_correction.``)."""
    return [*VERL_FLAGS, *(VERL_PREFIX + f[2:] for f in VERL_FLAGS)]


VERL_TO_OURS: Dict[str, str] = {
    "--rollout_is": "--enable_vllm_is_correction --vllm_is_correction_type tis|seq-tis|icepop|seq-mis",
    "--rollout_is_threshold": "--vllm_is_truncated_threshold",
    "--rollout_is_batch_normalize": "--is_batch_normalize",
    "--rollout_rs": "--rejection",
    "--rollout_rs_threshold": "--rejection MODE:LOW:HIGH / MODE:HIGH",
    "--bypass_mode": "--bypass_old_logprobs",
}


def _flag_and_value(tokens: Sequence[str], i: int) -> Tuple[str, Optional[str], int]:
    """(canonical verl flag, its value or None, tokens consumed) at ``tokens[i]``."""
    name, eq, value = tokens[i].partition("=")
    if name.startswith(VERL_PREFIX):
        name = "--" + name[len(VERL_PREFIX):]
    if eq:
        return name, value, 1
    if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
        return name, tokens[i + 1], 2
    return name, None, 1


def _true(value: Optional[str]) -> bool:
    return value is None or value.lower() in ("true", "1", "yes")


def _band(spec: str, flag: str, error) -> Tuple[Optional[float], float]:
    """verl's threshold spec: ``"L_U"`` -> (L, U), ``"U"`` -> (None, U)."""
    try:
        if "_" in spec:
            low, high = (float(v) for v in spec.split("_", 1))
            return low, high
        return None, float(spec)
    except ValueError:
        raise error(f"{flag} {spec}: expected U or L_U (verl's threshold spec)") from None


def _g(value: float) -> str:
    return repr(0.0 if value == 0 else value)


def rejection_criteria(modes: str, thresholds: Optional[str], error) -> List[str]:
    """verl's ``rollout_rs`` / ``rollout_rs_threshold`` as our ``--rejection`` criteria (same masks)."""
    options = list(dict.fromkeys(m.strip() for m in modes.split(",") if m.strip()))
    if thresholds is None:
        raise error("--rollout_rs needs --rollout_rs_threshold (verl requires it too)")
    specs = [s.strip() for s in str(thresholds).split(",") if s.strip()]
    if len(specs) == 1:
        specs = specs * len(options)
    if len(specs) != len(options):
        raise error(f"--rollout_rs_threshold gives {len(specs)} values for {len(options)} --rollout_rs modes")
    out = []
    for option, spec in zip(options, specs):
        low, high = _band(spec, "--rollout_rs_threshold", error)
        if option.endswith("k1"):
            low = 1.0 / high if low is None else low
            if not 0 < low <= high:
                raise error(f"--rollout_rs_threshold {spec} for {option}: need 0 < L <= U")
            # verl keeps -log r in [log L, log U]; ours reads k1 = log rho: the band [-log U, -log L].
            out.append(f"{option}:{_g(-math.log(high))}:{_g(-math.log(low))}")
        else:
            if low is not None:
                raise error(f"--rollout_rs_threshold {spec} for {option}: k2/k3 take one upper bound")
            out.append(f"{option}:{_g(high)}")
    return out


def _is_tokens(level: str, spec: str, error) -> List[str]:
    level = {"seq": "sequence"}.get(level, level)
    if level not in ("token", "sequence"):
        raise error(f"--rollout_is {level}: verl's levels are token, sequence or null")
    low, high = _band(spec, "--rollout_is_threshold", error)
    if low is None:  # a clamp of the weights at HIGH
        return ["--enable_vllm_is_correction", "--vllm_is_correction_type",
                "tis" if level == "token" else "seq-tis", "--vllm_is_truncated_threshold", _g(high)]
    return ["--enable_vllm_is_correction", "--vllm_is_correction_type", "icepop" if level == "token" else "seq-mis",
            "--vllm_is_truncated_threshold", _g(low), _g(high)]


def translate(tokens: Sequence[str], note: Callable[[str], None],
              error: Callable[[str], Exception] = ValueError) -> List[str]:
    """``tokens`` with verl's rollout-correction flags and verl's correction names replaced by ours."""
    verl: Dict[str, Optional[str]] = {}
    out: List[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        name = tok.partition("=")[0]
        if name == "--vllm_is_correction_type":
            _, value, n = _flag_and_value(tokens, i)
            if value in CORRECTION_REFUSALS:
                raise error(f"--vllm_is_correction_type {value}: {CORRECTION_REFUSALS[value]}")
            if value in CORRECTION_ALIASES:
                note(f"--vllm_is_correction_type {value} is {CORRECTION_ALIASES[value]} here (translated)")
                out += [name, CORRECTION_ALIASES[value]]
                i += n
                continue
        canonical = "--" + name[len(VERL_PREFIX):] if name.startswith(VERL_PREFIX) else name
        if canonical in VERL_FLAGS:
            flag, value, n = _flag_and_value(tokens, i)
            verl[flag] = value
            i += n
            continue
        out.append(tok)
        i += 1
    if not verl:
        return out
    ours: List[str] = []
    level = verl.get("--rollout_is")
    if level is not None and level.lower() not in ("null", "none"):
        ours += _is_tokens(level, verl.get("--rollout_is_threshold") or "2.0", error)  # verl's default 2.0
    elif "--rollout_is_threshold" in verl:
        raise error("--rollout_is_threshold needs --rollout_is token|sequence (verl's default null applies no IS "
                    "weights)")
    if "--rollout_is_batch_normalize" in verl and _true(verl["--rollout_is_batch_normalize"]):
        ours.append("--is_batch_normalize")
    modes = verl.get("--rollout_rs")
    if modes is not None and modes.lower() not in ("null", "none"):
        ours += ["--rejection", *rejection_criteria(modes, verl.get("--rollout_rs_threshold"), error)]
    elif verl.get("--rollout_rs_threshold") is not None:
        raise error("--rollout_rs_threshold needs --rollout_rs MODE (e.g. seq_mean_k1)")
    if "--bypass_mode" in verl and _true(verl["--bypass_mode"]):
        ours.append("--bypass_old_logprobs")
    given = " ".join(f"{k}{'' if v is None else ' ' + v}" for k, v in verl.items())
    note(f"verl's {given} is {' '.join(ours) or 'no correction'} here (translated)")
    return out + ours

"""``python -m openrlhf_offpolicy.cli.train_ppo_ray``: upstream's ``train_ppo_ray`` plus our flags.

Every upstream OpenRLHF 0.11.2 flag is accepted unchanged and parsed by upstream's own parser; this
module adds (SPEC §4):
    --enable_vllm_is_correction, --vllm_is_truncated_threshold LOW HIGH, --vllm_is_correction_type,
    --policy_loss_type, one --<name> per method parameter, --vllm_logprobs_topk K, --config FILE.yaml,
    --dry_run, --no_mismatch_metrics, --max_staleness N, --bypass_old_logprobs, --vllm_dtype.
Our flags are validated before anything heavy is imported, so a bad value or a contradiction
exits with status 2 and a one-line reason within a second or two, long before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

import yaml

from ..corrections import POLICY_LOSSES, correction_choices, method_params
from ..integration.settings import OffPolicySettings
from ..integration.upstream_args import given_flags, peek_upstream_args, vllm_enabled

PROG = "python -m openrlhf_offpolicy.cli.train_ppo_ray"


class UsageError(ValueError):
    """A bad command line; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one line
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Our flags only (upstream's are parsed by upstream's parser)."""
    parser = _Parser(prog=PROG, add_help=False, allow_abbrev=False,
                     description="Upstream OpenRLHF train_ppo_ray with off-policy corrections. "
                     "Every upstream flag is accepted unchanged; these are added:")
    parser.add_argument("--config", metavar="FILE.yaml", help="preset of flags (configs/); command-line flags win")
    parser.add_argument("--dry_run", action="store_true", help="print the resolved configuration and exit before Ray")
    parser.add_argument("--enable_vllm_is_correction", action="store_true",
                        help="apply --vllm_is_correction_type to the policy loss")
    parser.add_argument("--vllm_is_truncated_threshold", type=float, nargs="+", metavar=("LOW", "HIGH"),
                        help="band [LOW, HIGH] of the correction statistic (a single value: [0, HIGH]); "
                        "default 0.5 5.0")
    parser.add_argument("--vllm_is_correction_type", choices=correction_choices(), help="mismatch correction")
    parser.add_argument("--policy_loss_type", choices=POLICY_LOSSES.names(),
                        help="policy loss (overrides --actor.policy_loss_type, which knows ppo/gspo only)")
    parser.add_argument("--vllm_logprobs_topk", type=int, default=0, metavar="K",
                        help="request the top-K log-probs of every generated token from vLLM (1..20) for the "
                        "topk_tv / topk_kl divergences")
    parser.add_argument("--no_mismatch_metrics", action="store_true",
                        help="request rollout log-probs from vLLM only when a method needs them "
                        "(mismatch/* metrics are then missing from runs without a correction)")
    # issue 11: async off-policy training
    parser.add_argument("--max_staleness", type=int, default=None, metavar="N",
                        help="drop samples generated from weights more than N policy updates older than the "
                        "trainer's (logged: staleness/dropped_frac)")
    parser.add_argument("--bypass_old_logprobs", action="store_true",
                        help="use vLLM's rollout log-probs as pi_old and skip the actor's old-log-prob forward")
    parser.add_argument("--vllm_dtype", choices=["auto", "bfloat16", "float16"], default="auto",
                        help="dtype of the vLLM engines; auto follows --ds.param_dtype (upstream: always bfloat16)")
    group = parser.add_argument_group("method parameters")
    for p in method_params().values():
        # SUPPRESS: a flag that is not given leaves no attribute, so "given" is distinguishable from
        # "given as none" (optional parameters accept the word none, e.g. --trm_max_delta none).
        kwargs = dict(type=_value_parser(p), default=argparse.SUPPRESS, help=f"{p.help} (default {p.default})")
        if p.nargs:
            kwargs["nargs"] = p.nargs
        if p.choices is not None:
            kwargs["choices"] = list(p.choices())
        group.add_argument(f"--{p.name}", **kwargs)
    return parser


def _value_parser(param):
    def convert(text: str):
        if param.optional and text.lower() in ("none", "null"):
            return None
        return param.type(text)

    convert.__name__ = param.type.__name__  # argparse names the type in its error messages
    return convert


def config_tokens(path: str) -> List[str]:
    """A YAML preset (``flag: value`` pairs, flags without ``--``) as command-line tokens."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag: value")
    tokens: List[str] = []
    for key, value in data.items():
        flag = f"--{str(key).lstrip('-')}"
        if value is True:
            tokens.append(flag)
        elif value is False:
            continue
        elif value is None:
            tokens += [flag, "none"]
        elif isinstance(value, (list, tuple)):
            tokens += [flag, *map(str, value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def expand_config(argv: Sequence[str]) -> List[str]:
    """Replace ``--config FILE`` by the preset's tokens, placed first so the command line wins."""
    argv = list(argv)
    preset: List[str] = []
    out: List[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a FILE.yaml")
            preset += config_tokens(argv[i + 1])
            i += 2
            continue
        if tok.startswith("--config="):
            preset += config_tokens(tok.split("=", 1)[1])
        else:
            out.append(tok)
        i += 1
    return preset + out


def settings_from(ns: argparse.Namespace) -> OffPolicySettings:
    if ns.vllm_is_correction_type is not None and not ns.enable_vllm_is_correction:
        raise UsageError(
            f"--vllm_is_correction_type {ns.vllm_is_correction_type} has no effect without "
            "--enable_vllm_is_correction"
        )
    loss_kwargs: Dict[str, object] = {"enable_vllm_is_correction": ns.enable_vllm_is_correction}
    if ns.vllm_is_correction_type is not None:
        loss_kwargs["vllm_is_correction_type"] = ns.vllm_is_correction_type
    if ns.vllm_is_truncated_threshold is not None:
        loss_kwargs["vllm_is_truncated_threshold"] = list(ns.vllm_is_truncated_threshold)
    for name in method_params():
        if hasattr(ns, name):
            value = getattr(ns, name)
            loss_kwargs[name] = list(value) if isinstance(value, (list, tuple)) else value
    return OffPolicySettings(
        loss_kwargs=loss_kwargs,
        policy_loss_type=ns.policy_loss_type,
        request_rollout_logprobs=not ns.no_mismatch_metrics or ns.bypass_old_logprobs,
        logprobs_topk=ns.vllm_logprobs_topk,
        max_staleness=ns.max_staleness,
        bypass_old_logprobs=ns.bypass_old_logprobs,
        vllm_dtype=ns.vllm_dtype,
    )


def with_engine_dtype(settings: OffPolicySettings, upstream_args) -> OffPolicySettings:
    """The settings with the vLLM engines' dtype resolved (None without vLLM)."""
    from dataclasses import replace

    from ..integration.engine_dtype import resolve_engine_dtype

    if not vllm_enabled(upstream_args):
        return settings
    return replace(settings, engine_dtype=resolve_engine_dtype(settings.vllm_dtype, upstream_args.ds.param_dtype))


def parse(argv: Sequence[str]):
    """(our namespace, settings, upstream argv) after the fast checks; UsageError/ValueError."""
    tokens = expand_config(argv)
    ours, upstream_argv = build_parser().parse_known_args(tokens)
    settings = settings_from(ours)
    peeked = peek_upstream_args(upstream_argv)
    settings.check(peeked, given_flags(upstream_argv))
    settings = with_engine_dtype(settings, peeked)
    return ours, settings, upstream_argv


def flatten(namespace, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for key, value in vars(namespace).items():
        if key == "offpolicy":
            continue
        name = f"{prefix}{key}"
        if hasattr(value, "__dict__") and not isinstance(value, type):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        print("\nUpstream OpenRLHF 0.11.2 flags:\n")
        sys.stdout.flush()
        from ..integration.launch import run_upstream_help

        return run_upstream_help()
    try:
        ours, settings, upstream_argv = parse(argv)
    except ValueError as e:
        print(f"train_ppo_ray: error: {e}", file=sys.stderr)
        return 2

    from ..integration.launch import run

    try:
        args, config, settings = run(upstream_argv, settings, dry_run=ours.dry_run,
                                     explicit_flags=given_flags(upstream_argv), prog=PROG)
    except ValueError as e:
        print(f"train_ppo_ray: error: {e}", file=sys.stderr)
        return 2
    if ours.dry_run:
        resolved = {
            "upstream": flatten(args),
            "offpolicy": {"settings": json.loads(settings.to_json()), "policy_loss": config.describe(),
                          "vllm_engine_dtype": settings.engine_dtype},
        }
        print(json.dumps(resolved, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

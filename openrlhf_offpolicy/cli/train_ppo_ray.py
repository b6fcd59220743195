"""``python -m openrlhf_offpolicy.cli.train_ppo_ray``: upstream's ``train_ppo_ray`` plus our flags.

Every upstream OpenRLHF 0.11.2 flag is accepted unchanged and parsed by upstream's own parser; this
module adds (see the README, "Flags"):
    --enable_vllm_is_correction, --vllm_is_truncated_threshold LOW HIGH, --vllm_is_correction_type,
    --policy_loss_type, --rejection CRITERION [...], --is_batch_normalize, one --<name> per method
    parameter, --vllm_logprobs_topk K, --routing_replay {off,r2,r3}, --config FILE.yaml,
    --dry_run, --no_mismatch_metrics, --match_rollout_sampling, --uniform_scale (with
    --algo.advantage.estimator reinforce_max), --max_staleness N, --bypass_old_logprobs, --vllm_dtype.
The seed fork's OpenRLHF 0.9.x flat flags (``--pretrain``, ...) are translated to 0.11.2's, one
stderr line each (``integration.legacy_flags``). Every flag, ours and upstream's, is validated
before anything heavy is imported (``cli.checks``; upstream's parser is read from its source), so
bad input exits with status 2 and a one-line reason within a second or two. ``--help`` and
``--dry_run`` run upstream's argument handling only, so they work without a GPU stack.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

# torch imports the deprecated pynvml on CPU machines and warns about it on every start.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)

from ..corrections import POLICY_LOSSES, correction_choices, method_params  # noqa: E402
from ..corrections.config import ARGUMENT_HELP  # noqa: E402
from ..integration.runtime.advantages import translate_estimator  # noqa: E402
from ..integration.driver.routing_checks import unchecked_model_note  # noqa: E402
from ..integration.driver.launch import final_settings  # noqa: E402
from ..integration.runtime.settings import OffPolicySettings  # noqa: E402
from ..integration.runtime.upstream_args import given_flags, peek_upstream_args, vllm_enabled  # noqa: E402
from . import checks  # noqa: E402
from .config_file import load_preset  # noqa: E402
from ..integration.runtime.redaction import (REDACTED, is_secret_flag, redact_text, redact_value,  # noqa: E402
                                             secret_values, shorten_tokens)
from ..corrections.registry import shorten  # noqa: E402
from .checks import StrictParser as _Parser, UsageError  # noqa: E402,F401

PROG = "python -m openrlhf_offpolicy.cli.train_ppo_ray"


def build_parser() -> argparse.ArgumentParser:
    """Our flags only (upstream's are parsed by upstream's parser)."""
    parser = _Parser(prog=PROG, add_help=False, allow_abbrev=False,
                     description="Upstream OpenRLHF train_ppo_ray with off-policy corrections. "
                     "Every upstream flag is accepted unchanged; these are added:")
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="preset of flags (configs/, shipped in the package too); command-line flags win")
    parser.add_argument("--dry_run", action="store_true", help="print the resolved configuration and exit before Ray")
    parser.add_argument("--verbose", action="store_true",
                        help="print one note per translated OpenRLHF 0.9.x flag (default: one summary line)")
    parser.add_argument("--enable_vllm_is_correction", action="store_true",
                        help=ARGUMENT_HELP["enable_vllm_is_correction"])
    parser.add_argument("--vllm_is_truncated_threshold", type=float, nargs="+", metavar=("LOW", "HIGH"),
                        help=ARGUMENT_HELP["vllm_is_truncated_threshold"] + "; default 0.5 5.0")
    parser.add_argument("--vllm_is_correction_type", choices=correction_choices(),
                        help=ARGUMENT_HELP["vllm_is_correction_type"])
    parser.add_argument("--rejection", nargs="+", metavar="CRITERION", help=ARGUMENT_HELP["rejection"])
    parser.add_argument("--is_batch_normalize", action="store_true", help=ARGUMENT_HELP["is_batch_normalize"])
    parser.add_argument("--policy_loss_type", choices=POLICY_LOSSES.names(),
                        help=ARGUMENT_HELP["policy_loss_type"]
                        + " (overrides --actor.policy_loss_type, which knows ppo/gspo only)")
    parser.add_argument("--vllm_logprobs_topk", type=int, default=0, metavar="K",
                        help="request the top-K log-probs of every generated token from vLLM (1..20) for the "
                        "topk_tv / topk_kl divergences")
    parser.add_argument("--routing_replay", default="off", choices=("off", "r2", "r3"),
                        help="MoE routing replay: r2 replays the old-log-prob forward's routing in training, "
                        "r3 replays vLLM's rollout routing in both actor forwards")
    parser.add_argument("--no_mismatch_metrics", action="store_true",
                        help="request rollout log-probs from vLLM only when a method needs them "
                        "(mismatch/* metrics are then missing from runs without a correction)")
    parser.add_argument("--uniform_scale", action="store_true",
                        help="with --algo.advantage.estimator reinforce_max: a prompt group whose rewards are all "
                        "equal gets r/n instead of 0")
    parser.add_argument("--match_rollout_sampling", action="store_true",
                        help="apply the rollout's top-p truncation (--rollout.top_p) to the trainer's old and "
                        "current log-probs, so rollout log-probs measure the engine mismatch only (trains the "
                        "truncated policy); without it a truncated rollout with a consumer of rollout log-probs "
                        "is refused")
    # async off-policy training
    parser.add_argument("--max_staleness", type=int, default=None, metavar="N",
                        help="drop samples generated from weights more than N policy updates older than the "
                        "trainer's (logged: staleness/dropped_frac)")
    parser.add_argument("--bypass_old_logprobs", action="store_true",
                        help="use vLLM's rollout log-probs as pi_old and skip the actor's old-log-prob forward")
    parser.add_argument("--vllm_dtype", choices=["auto", "bfloat16", "float16"], default="auto",
                        help="dtype of the vLLM engines; auto follows --ds.param_dtype (upstream: always bfloat16)")
    smoke = parser.add_argument_group("CPU smoke test")
    smoke.add_argument("--smoke_test", type=int, default=None, metavar="N",
                       help="run N steps of this configuration on this machine's CPU: upstream's real loop with a "
                       "tiny random model of the same architecture and a stand-in vLLM engine; prints a summary "
                       "and, last, one JSON line")
    smoke.add_argument("--smoke_mismatch", choices=("none", "bf16", "weights", "router"), default="bf16",
                       help="the stand-in engine's mismatch against the trainer: none (the trainer's own "
                       "log-probs), bf16 (its own KV-cache decode), weights (plus weight noise), router (plus "
                       "router-logit noise, MoE)")
    smoke.add_argument("--smoke_mismatch_scale", type=float, default=None, metavar="X",
                       help="noise scale of --smoke_mismatch weights (relative, default 0.02) or router "
                       "(default 1.0)")
    smoke.add_argument("--smoke_dir", default=None, metavar="DIR",
                       help="where the smoke test writes its model, data, logs and checkpoints (default: a new "
                       "temporary directory)")
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


def config_items(path: str, known: Optional[Sequence[str]] = None,
                 suggest: Optional[Sequence[str]] = None) -> List[Tuple[str, object, List[str]]]:
    """A YAML preset (``flag: value`` pairs, flags without ``--``) as ``(--flag, value, tokens)``.

    With ``known`` (every valid ``--flag``), an unknown key is an error naming the file, the key
    and the nearest key of ``suggest`` (default ``known``). The file is read defensively
    (``config_file``): regular files up to 1 MiB, no aliases, bounded depth, no duplicate keys; an
    empty file is an error."""
    data, where = load_preset(path)
    if not data:
        raise UsageError(f"{where}: the file sets nothing (empty or only comments); expected flag: value "
                         "pairs such as 'policy_loss_type: sapo'")
    suggest = known if suggest is None else suggest
    items: List[Tuple[str, object, List[str]]] = []
    for key, value in data.items():
        flag = f"--{key.lstrip('-')}"
        if isinstance(value, dict):
            example = next(iter(value), "name")
            raise UsageError(f"{where}: key {shorten(key)} holds a nested mapping; write flat dotted keys "
                             f"such as '{shorten(key)[1:-1]}.{shorten(example)[1:-1]}: ...'")
        if known is not None and flag not in known:
            completions = sorted(k for k in suggest if k.startswith(flag))
            hint = completions[0] if completions else checks.nearest(flag, suggest)
            raise UsageError(f"{where}: unknown key {shorten(key)}"
                             + (f"; did you mean {hint[2:]}?" if hint else ""))
        if isinstance(value, (list, tuple)) and any(isinstance(v, (list, tuple, dict)) for v in value):
            raise UsageError(f"{where}: key {shorten(key)} holds a nested list; give a flat list of values")
        if value is True:
            tokens = [flag]
        elif value is False:
            tokens = []
        elif value is None:
            tokens = [flag, "none"]
        elif isinstance(value, (list, tuple)):
            tokens = [flag, *map(str, value)]
        else:
            tokens = [flag, str(value)]
        items.append((flag, value, tokens))
    return items


def config_tokens(path: str, known: Optional[Sequence[str]] = None) -> List[str]:
    """A YAML preset as command-line tokens (see ``config_items``)."""
    return [tok for _, _, tokens in config_items(path, known) for tok in tokens]


def expand_config_with_sources(argv: Sequence[str], known: Optional[Sequence[str]] = None,
                               suggest: Optional[Sequence[str]] = None) -> Tuple[List[str], Dict[str, str]]:
    """Replace every ``--config FILE`` by the preset's tokens, placed first so the command line wins.

    Stacked files (``--config a.yaml --config b.yaml``) are merged: a key set by several files must
    have the same value in each, unless the command line sets it (it wins over every file); else the
    error names both files. Returns the tokens and, per flag taken from a file, that file."""
    argv = list(argv)
    files: List[Tuple[str, List[Tuple[str, object, List[str]]]]] = []
    out: List[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a FILE.yaml")
            files.append((argv[i + 1], config_items(argv[i + 1], known, suggest)))
            i += 2
            continue
        if tok.startswith("--config="):
            path = tok.split("=", 1)[1]
            files.append((path, config_items(path, known, suggest)))
        else:
            out.append(tok)
        i += 1
    typed = {tok.split("=", 1)[0] for tok in out if tok.startswith("--")}
    sources: Dict[str, str] = {}
    values: Dict[str, object] = {}
    preset: List[str] = []
    for path, items in files:
        for flag, value, tokens in items:
            if flag in sources and flag not in typed and _yaml_value(values[flag]) != _yaml_value(value):
                raise UsageError(
                    f"--config {sources[flag]} sets {flag[2:]}: {_yaml_value(values[flag])} but --config {path} sets "
                    f"{flag[2:]}: {_yaml_value(value)}; give {flag} on the command line to choose (it wins over "
                    "every file)")
            sources[flag], values[flag] = path, value
            preset += tokens
    return preset + out, {flag: path for flag, path in sources.items() if flag not in typed}


def _yaml_value(value) -> str:
    return json.dumps(value)


def expand_config(argv: Sequence[str], known: Optional[Sequence[str]] = None) -> List[str]:
    """``argv`` with every ``--config FILE`` expanded (see ``expand_config_with_sources``)."""
    return expand_config_with_sources(argv, known)[0]


def with_sources(message: str, sources: Dict[str, str]) -> str:
    """``message`` plus, for each flag it names that a ``--config`` file set, which file set it."""
    named = [f for f in dict.fromkeys(re.findall(r"--[A-Za-z0-9_.]+", message)) if f in sources]
    if not named:
        return message
    return message + " (" + "; ".join(f"{f} is set by --config {sources[f]}" for f in named) + ")"


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
    if ns.rejection:
        loss_kwargs["rejection"] = list(ns.rejection)
    if ns.is_batch_normalize:
        loss_kwargs["is_batch_normalize"] = True
    for name in method_params():
        if hasattr(ns, name):
            value = getattr(ns, name)
            loss_kwargs[name] = list(value) if isinstance(value, (list, tuple)) else value
    # A loss that reads no pi_old (a3po) runs in bypass mode: no old-log-prob forward.
    bypass = ns.bypass_old_logprobs or (ns.policy_loss_type is not None
                                        and POLICY_LOSSES.get(ns.policy_loss_type).bypass)
    return OffPolicySettings(
        loss_kwargs=loss_kwargs,
        policy_loss_type=ns.policy_loss_type,
        request_rollout_logprobs=not ns.no_mismatch_metrics or bypass,
        logprobs_topk=ns.vllm_logprobs_topk,
        match_rollout_sampling=ns.match_rollout_sampling,
        routing_replay=ns.routing_replay,
        max_staleness=ns.max_staleness,
        bypass_old_logprobs=bypass,
        vllm_dtype=ns.vllm_dtype,
    )


def with_engine_dtype(settings: OffPolicySettings, upstream_args) -> OffPolicySettings:
    """The settings with the vLLM engines' dtype resolved (None without vLLM)."""
    from dataclasses import replace

    from ..integration.runtime.engine_dtype import resolve_engine_dtype

    if not vllm_enabled(upstream_args):
        return settings
    return replace(settings, engine_dtype=resolve_engine_dtype(settings.vllm_dtype, upstream_args.ds.param_dtype))


class Output:
    """Every line the CLI prints goes through here: secrets redacted, long echoed input cut short.

    ``tokens`` grows as the command line is expanded (a preset's values count as input too)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.tokens: List[str] = [str(t) for t in argv]

    def add(self, tokens: Sequence[str]) -> None:
        self.tokens += [str(t) for t in tokens]

    def clean(self, text: str) -> str:
        from ..integration.driver import legacy_flags
        secrets = secret_values(self.tokens, legacy_flags.table())
        return redact_text(shorten_tokens(text, self.tokens), secrets)

    def note(self, line: str) -> None:
        print(self.clean(f"train_ppo_ray: note: {line}"), file=sys.stderr)

    def error(self, message: object) -> None:
        print(self.clean(f"train_ppo_ray: error: {message}"), file=sys.stderr)


def report_translations(notes: Sequence[str], verbose: bool, note) -> None:
    """One stderr line (through ``note``) for all the 0.9.x flags translated (``--verbose``: one line each)."""
    if verbose:
        for line in notes:
            note(line)
        return
    if not notes:
        return
    length = [line for line in notes if "--prompt_max_len" in line and " are --data.max_len" in line]
    note(f"translated {len(notes)} OpenRLHF 0.9.x flag{'s' if len(notes) > 1 else ''} to their 0.11.2 names"
         + (f" ({length[0].replace('OpenRLHF 0.9.x flags ', '').replace(' in 0.11.2:', ';')})" if length else "")
         + "; --verbose lists each")


def parse(argv: Sequence[str], output: Optional[Output] = None):
    """(our namespace, settings, upstream argv) after the fast checks; UsageError/ValueError.

    Raises ``UpstreamMissing`` when OpenRLHF is not installed."""
    from ..integration.driver import legacy_flags, neighbour_names
    from ..integration.driver.upstream_source import upstream_parser

    output = output if output is not None else Output(argv)
    ours_parser, upstream = build_parser(), upstream_parser()
    known = checks.option_strings(ours_parser) + checks.option_strings(upstream)
    tokens, sources = expand_config_with_sources(
        argv, known + list(legacy_flags.table()) + list(legacy_flags.NO_EQUIVALENT) + neighbour_names.yaml_keys(),
        suggest=known)
    output.add(tokens)
    try:
        return _parse_tokens(tokens, known, ours_parser, upstream, output)
    except ValueError as e:
        raise type(e)(with_sources(str(e), sources)) from None


def _parse_tokens(tokens: List[str], known: List[str], ours_parser, upstream, output: Output):
    from ..integration.driver import legacy_flags, neighbour_names
    neighbour_notes: List[str] = []
    tokens = neighbour_names.translate(tokens, neighbour_notes.append, error=UsageError)
    output.add(tokens)
    notes: List[str] = []
    tokens = legacy_flags.translate(tokens, known, notes.append, error=UsageError)
    output.add(tokens)
    full = checks.check_tokens(tokens, ours_parser, upstream)
    checks.check_inputs(full)
    checks.check_correction_apis(vars(full))
    ours, upstream_argv = ours_parser.parse_known_args(tokens)
    upstream_argv, estimator = translate_estimator(upstream_argv)  # reinforce_max: upstream runs rloo
    checks.check_bands({
        "--vllm_is_truncated_threshold": ours.vllm_is_truncated_threshold,
        "--algo.advantage.is_correction_threshold": vars(full).get("algo.advantage.is_correction_threshold"),
    })
    peeked = peek_upstream_args(upstream_argv)
    settings = replace(settings_from(ours), advantage_estimator=estimator, uniform_scale=ours.uniform_scale)
    upstream_given = given_flags(upstream_argv)
    config, settings = final_settings(peeked, settings, upstream_given)  # as launch.run will, before Ray
    settings = with_engine_dtype(settings, peeked)
    checks.check_ppo_clip_flags(config, upstream_given, vars(full), {a.dest: a.default for a in upstream._actions})
    # notes after the checks: a refused command line is one line
    for line in neighbour_notes:
        output.note(line)
    report_translations(notes, ours.verbose, output.note)
    model_note = unchecked_model_note(settings.routing_replay, peeked)
    if model_note:
        output.note(model_note)
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


def redact(flat: Dict[str, object], secrets=()) -> Dict[str, object]:
    """Hide the values of secret flags (e.g. ``logger.wandb.key``) and every credential inside a string
    value (URL user-info, credential query parameters, ``secrets``)."""
    return {
        name: REDACTED if value not in (None, "", [], False) and is_secret_flag(name) else redact_value(value, secrets)
        for name, value in flat.items()
    }


def print_help() -> int:
    from ..integration.driver.upstream_source import UpstreamMissing, upstream_parser

    build_parser().print_help()
    try:
        upstream = upstream_parser()
    except UpstreamMissing as e:
        print(f"train_ppo_ray: {e}", file=sys.stderr)
        return 0
    upstream.prog = PROG
    print("\nUpstream OpenRLHF 0.11.2 flags (OpenRLHF 0.9.x flat flags such as --pretrain are translated):\n")
    upstream.print_help()
    return 0


def smoke_test(ours, settings, upstream_argv) -> int:
    from ..integration.driver import smoke
    if ours.smoke_test < 1:
        raise UsageError(f"--smoke_test needs a number of steps >= 1, got {ours.smoke_test}")
    if ours.dry_run:
        raise UsageError("--smoke_test and --dry_run exclude each other")
    return smoke.run(upstream_argv, settings, ours.smoke_test, ours.smoke_mismatch, ours.smoke_mismatch_scale,
                     ours.smoke_dir, PROG)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..integration.driver.launch import MissingDependency
    from ..integration.driver.upstream_source import UpstreamMissing

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        return print_help()
    output = Output(argv)
    try:
        ours, settings, upstream_argv = parse(argv, output)
        if ours.smoke_test is not None:
            return smoke_test(ours, settings, upstream_argv)
        from ..integration.driver.launch import run

        args, config, settings = run(upstream_argv, settings, dry_run=ours.dry_run,
                                     explicit_flags=given_flags(upstream_argv), prog=PROG)
    except (ValueError, UpstreamMissing, MissingDependency) as e:
        output.error(e)
        return 2
    if ours.dry_run:
        from ..integration.driver import legacy_flags
        secrets = secret_values(output.tokens, legacy_flags.table())
        resolved = {
            "upstream": redact(flatten(args), secrets),
            "offpolicy": redact_value({"settings": json.loads(settings.to_json()), "policy_loss": config.describe(),
                                       "vllm_engine_dtype": settings.engine_dtype}, secrets),
        }
        print(json.dumps(resolved, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the experience step with and without ``--bypass_old_logprobs``.

    python benchmarks/bench_bypass.py [--batch 32 --prompt 64 --response 192 --micro 8 --rounds 7]

Both sides run upstream 0.11.2's own ``RemoteExperienceMaker.make_experience`` on the same rollout
samples. The actor and reference ``RayActorGroup``s are stood in by ``LocalGroup``, which runs
upstream's ``openrlhf.models.Actor.forward`` (what ``PolicyModelActor.forward`` runs) on a tiny
random Qwen2 model (4 layers, hidden 256, vocab 4096) in this process, one call per micro-batch,
and counts the forward passes and the tokens they process; Ray's ``put``/``get`` are identity functions
(nothing leaves the process). Baseline: upstream (actor forward for
pi_old, reference forward for the KL). Bypass: the same with the patch of ``patches.install``
installed. Rounds alternate baseline and bypass; printed: median wall time of each, the per-round
ratio bypass/baseline (median [min..max]) and the forward passes counted per experience step.

Upstream's ``openrlhf.models`` imports ``flash_attn`` at import time (never called here, no packing);
where it is not installed the test suite's import stand-in (``tests/stubs``) is put on the path.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
if importlib.util.find_spec("flash_attn") is None:
    sys.path.insert(0, os.path.join(REPO, "tests", "stubs"))

import common  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402


class LocalGroup:
    """A RayActorGroup stand-in that runs Actor.forward here and counts what it computes."""

    def __init__(self, actor):
        self.actor = actor
        self.forward_passes = 0
        self.tokens = 0

    def async_run_method_batch(self, method_name, sequences, action_mask, attention_mask, **kwargs):
        import ray

        assert method_name == "forward"
        outputs = []
        with torch.no_grad():
            for seq, act, att in zip(sequences, action_mask, attention_mask):
                outputs.append(self.actor(seq, action_mask=act, attention_mask=att))
                self.forward_passes += 1
                self.tokens += int(att.sum())
        return [ray.put(outputs)]

    def async_run_method(self, method_name, **kwargs):
        return []


def make_samples(args, vocab, generator):
    from openrlhf.trainer.ppo_utils.experience import Experience

    samples = []
    length = args.prompt + args.response
    for _ in range(args.batch):
        sequences = torch.randint(1, vocab, (1, length), generator=generator)
        action_mask = torch.zeros(1, length - 1, dtype=torch.bool)
        action_mask[:, args.prompt - 1:] = True
        samples.append(Experience(sequences=sequences, attention_mask=torch.ones(1, length, dtype=torch.long),
                                  action_mask=action_mask, rollout_log_probs=-torch.rand(1, length - 1,
                                                                                         generator=generator),
                                  rewards=torch.ones(1), info={}))
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="samples per experience step")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=192)
    parser.add_argument("--micro", type=int, default=8, help="micro-batch size of the forwards")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    load_before = common.load_average()

    import ray
    from openrlhf.models import Actor
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from openrlhf_offpolicy.integration.runtime import patches
    from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    actor, reference = (Actor(Qwen2ForCausalLM(config).eval()) for _ in range(2))
    for a in (actor, reference):
        a.packing_samples = False  # upstream sets it only when Actor loads the model from a path
    samples = make_samples(args, config.vocab_size, torch.Generator().manual_seed(0))
    samples_list = [Experience.concat_experiences(samples[i:i + args.micro], 0)
                    for i in range(0, len(samples), args.micro)]
    ns = SimpleNamespace
    upstream_args = ns(ds=ns(ring_attn_size=1, tensor_parallel_size=1),
                       train=ns(colocate_all=False, colocate_actor_ref=False, colocate_critic_reward=False),
                       algo=ns(kl=ns(use_loss=False, estimator="k1"), advantage=ns(estimator="group_norm")))

    # Everything runs in this process: Ray's object store is stood in by identity put/get (upstream's
    # result gathering, ray.get(list of refs)[::k], works unchanged on the values).
    ray.put, ray.get = (lambda value: value), (lambda refs: refs)
    times = {"baseline": [], "bypass": []}
    counts = {}
    for round_ in tqdm(range(args.rounds + 1), desc="bench_bypass"):
        for mode in ("baseline", "bypass"):
            actor_group, reference_group = LocalGroup(actor), LocalGroup(reference)
            maker = RemoteExperienceMaker(actor_group, None, None, reference_group, None,
                                          ns(args=upstream_args), None)
            if mode == "bypass":
                patches.install(OffPolicySettings(bypass_old_logprobs=True))
            try:
                start = time.perf_counter()
                maker.make_experience(samples_list)
                elapsed = time.perf_counter() - start
            finally:
                patches.undo()
            if round_ > 0:  # round 0 warms up
                times[mode].append(elapsed)
            counts[mode] = {"actor_forwards": actor_group.forward_passes, "actor_tokens": actor_group.tokens,
                            "reference_forwards": reference_group.forward_passes,
                            "reference_tokens": reference_group.tokens}

    ratios = [b / a for a, b in zip(times["baseline"], times["bypass"])]
    result = {
        "config": vars(args), "counts_per_step": counts,
        "baseline_s_median": statistics.median(times["baseline"]),
        "bypass_s_median": statistics.median(times["bypass"]),
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "times": times,
    }
    lines = [
        f"experience step of {args.batch} samples x {args.prompt + args.response} tokens, micro-batch {args.micro}, "
        f"tiny Qwen2 on CPU ({torch.get_num_threads()} threads), {args.rounds} rounds",
        "| | actor forward passes | actor tokens | reference forward passes | median wall time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("baseline", "bypass"):
        c = counts[mode]
        lines.append(f"| {mode} | {c['actor_forwards']} | {c['actor_tokens']} | {c['reference_forwards']} | "
                     f"{result[f'{mode}_s_median']:.3f} |")
    lines.append(f"\nbypass / baseline wall time: {result['ratio_median']:.3f} "
                 f"[{result['ratio_min']:.3f}..{result['ratio_max']:.3f}] (median [min..max] over rounds)")
    lines.insert(0, f"load average before {load_before}, after {common.load_average()}\n")
    text = "\n".join(lines)
    result["misses"] = []
    result["summary"] = [f"bypass: experience step {result['ratio_median']:.3f}x [{result['ratio_min']:.3f}.."
                         f"{result['ratio_max']:.3f}] of upstream's (actor forwards "
                         f"{counts['bypass']['actor_forwards']}"
                         f" vs {counts['baseline']['actor_forwards']})"]
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_bypass.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "bench_bypass.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Driver used by test_worker.py: run our CLI up to the point upstream's ``train`` has called
``ray.init``, then start a Ray actor and report what it sees; exits before any model is built.

Usage: python probe_job.py OUT.json CLI-ARGS...
"""

import json
import sys

import openrlhf.utils


OUT = sys.argv[1]  # read now: the CLI replaces sys.argv while upstream's module runs


class _Probed(Exception):
    pass


def probe_actors(args):
    """Called where upstream's train() calls get_strategy (right after its ray.init)."""
    import ray

    @ray.remote(num_cpus=0.1)
    class Probe:
        def report(self):
            import os

            from openrlhf.trainer.ppo_utils import samples_generator
            from openrlhf.trainer.ray import ppo_actor

            from openrlhf_offpolicy.integration.runtime.upstream_args import loss_kwargs_from_args

            loss = ppo_actor.PolicyLoss(**loss_kwargs_from_args(args))  # as ActorPPOTrainer builds it
            params = samples_generator.SamplingParams(temperature=1.0, max_tokens=4)
            return {
                "pid": os.getpid(),
                "class_module": ppo_actor.PolicyLoss.__module__,
                "settings": json.loads(ppo_actor.PolicyLoss.settings.to_json()),
                "policy_loss_type": loss.config.policy_loss_type,
                "correction": loss.config.correction,
                "threshold": list(loss.config.threshold),
                "sampling_logprobs": params.logprobs,
                "job_env": os.environ.get("PROBE_JOB_ENV"),
                "user_hook_ran": os.environ.get("PROBE_USER_HOOK_RAN"),
            }

    report = ray.get(Probe.remote().report.remote())
    with open(OUT, "w") as f:
        json.dump(report, f)
    raise _Probed()


if __name__ == "__main__":
    openrlhf.utils.get_strategy = probe_actors
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    try:
        main(sys.argv[2:])
    except _Probed:
        print("probed")

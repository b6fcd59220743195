"""The only code that touches OpenRLHF internals (pinned ``openrlhf==0.11.2``), in two layers.

``driver`` runs in the launching process, before Ray starts:
    launch         upstream's train_ppo_ray ``__main__`` run with our hooks (runpy); ``finalize_args``
    checks         the settings checked against upstream's parsed args; the one OffPolicyConfig resolved
    routing_checks, async_settings  the checks of routing replay and of async training
    upstream_source  upstream's parser and ``__main__`` block read from its source (--help, --dry_run)
    legacy_flags, neighbour_names  the seed fork's 0.9.x flags and neighbouring tools' names -> ours
    smoke          --smoke_test: the user's configuration rewritten for this machine's CPU

``runtime`` is what upstream's processes run once patched (the Ray workers, and the driver's
``ray.init`` / wandb calls); it never imports ``driver``:
    patch_table    every replaced upstream symbol, once: (module, target, its wrappers in order)
    patches        install/undo: the table's entries, applied when each module is imported
    imports        post-import hooks (standard library only)
    settings       OffPolicySettings: our flags and the resolved OffPolicyConfig, one plain value
    worker         the Ray worker_process_setup_hook (standard library only; chains the user's)
    launch_hooks, run_state  the table's entries for the launching process; the run in progress
    ray_classes    which class Ray instantiates for a @ray.remote class, and upstream's method under it
    versions       the version gate (openrlhf 0.11.2, vLLM in the tested range)
    wrappers, contexts, loss  the loss, its metrics, rollout log-probs and the log-prob kernel
    topk, routing  the rollout's top-K log-probs; MoE routing replay (r2 / r3)
    sampling, advantages  rollout truncation matched (--match_rollout_sampling); reinforce_max
    policy_versions, staleness, bypass, engine_dtype  async training
    upstream_args  the upstream flags we read, and how upstream builds its PolicyLoss kwargs
    redaction, wandb_config  credentials out of every printout and the wandb config
    cpu_backend, standin_engine, gloo_group, flash_attn_placeholder  upstream's real loop on CPU

Layers point down only (cli -> driver -> runtime -> models -> corrections), with no import cycle:
import-linter checks both (pyproject.toml). On an upstream upgrade, this package is the one place to look.
"""

"""The only code that touches OpenRLHF internals (pinned ``openrlhf==0.11.2``).

    patch_table    every replaced upstream symbol, once: (module, target, its wrappers in order)
    patches        install/undo: the table's entries, applied when each module is imported
    imports        post-import hooks (standard library only)
    ray_classes    which class Ray instantiates for a @ray.remote class, and upstream's method under it
    versions       the version gate (openrlhf 0.11.2, vLLM in the tested range)
    settings       OffPolicySettings: our flags, a plain value carried to every process of the run
    worker         the Ray worker_process_setup_hook (standard library only; chains the user's)
    wrappers       the replacements for the loss, its metrics, rollout log-probs and the log-prob kernel
    contexts       the context variables set around the actor's forwards (truncation, top-K ids)
    loss           the PolicyLoss class upstream's ActorPPOTrainer builds once patched
    topk           the rollout's top-K log-probs from vLLM to the loss
    routing, routing_checks  MoE routing replay (r2 / r3) and its checks before Ray
    sampling       rollout truncation: refused before Ray, or matched (--match_rollout_sampling)
    advantages     reinforce_max on upstream's experience maker
    policy_versions, staleness, async_settings, bypass, engine_dtype  async training and its flags
    upstream_args  the upstream flags we read, and how upstream builds its PolicyLoss kwargs
    launch, run_state  run upstream's train_ppo_ray __main__ with our hooks (runpy); the run in progress
    upstream_source  upstream's parser and __main__ block read from its source (--help, --dry_run,
                   the CLI's checks) without importing upstream's heavy modules
    legacy_flags, neighbour_names  the seed fork's 0.9.x flags and neighbouring tools' names -> ours
    redaction, wandb_config  credentials out of every printout and the wandb config; nested sections
    smoke          --smoke_test: the user's configuration rewritten for this machine's CPU
    cpu_backend, standin_engine, gloo_group, flash_attn_placeholder  upstream's real loop on CPU

Import order (acyclic, checked by import-linter: see pyproject.toml): imports, settings, versions,
ray_classes, run_state <- patch_table <- patches <- wrappers/loss/topk.
On an upstream upgrade, this package is the one place to look.
"""

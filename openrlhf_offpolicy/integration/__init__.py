"""The only code that touches OpenRLHF internals (pinned ``openrlhf==0.11.2``).

    patch_table    every replaced upstream symbol: (module, target, make, when, why)
    patches        install/undo: the table's entries, applied when each module is imported
    imports        post-import hooks (standard library only)
    versions       the version gate (openrlhf 0.11.2, vLLM in the tested range)
    settings       OffPolicySettings: our flags, a plain value carried to every process of the run
    worker         the Ray worker_process_setup_hook (standard library only; chains the user's)
    wrappers       the replacements for the loss, its metrics, rollout log-probs and the log-prob kernel
    loss           the PolicyLoss class upstream's ActorPPOTrainer builds once patched
    topk           the rollout's top-K log-probs from vLLM to the loss
    sampling       rollout truncation: refused before Ray, or matched (--match_rollout_sampling)
    upstream_args  the upstream flags we read, and how upstream builds its PolicyLoss kwargs
    launch         run upstream's train_ppo_ray __main__ with our hooks (runpy)
    upstream_source  upstream's parser and __main__ block read from its source (--help, --dry_run,
                   the CLI's checks) without importing upstream's heavy modules
    legacy_flags   the seed fork's OpenRLHF 0.9.x flags -> 0.11.2's (derived table + hand table)

Import order (acyclic): imports, settings, versions <- patch_table <- patches <- wrappers/loss/topk.
On an upstream upgrade, this package is the one place to look.
"""

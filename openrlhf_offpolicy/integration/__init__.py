"""The only code that touches OpenRLHF internals (pinned ``openrlhf==0.11.2``).

    upstream_args  the upstream flags we read, and how upstream builds its PolicyLoss kwargs
    settings       OffPolicySettings: our flags, carried to every process of the run
    loss           the PolicyLoss class upstream's ActorPPOTrainer builds once patched
    patches        apply/undo: what is replaced in a process running OpenRLHF
    worker         the Ray worker_process_setup_hook
    launch         run upstream's train_ppo_ray __main__ with our hooks (runpy)
    upstream_source  upstream's parser and __main__ block read from its source (--help, --dry_run,
                   the CLI's checks) without importing upstream's heavy modules
    legacy_flags   the seed fork's OpenRLHF 0.9.x flags -> 0.11.2's (derived table + hand table)

On an upstream upgrade, this package is the one place to look.
"""

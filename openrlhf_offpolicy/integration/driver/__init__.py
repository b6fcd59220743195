"""The launching process, before Ray starts: upstream's parser and ``__main__`` read from its source,
the checks that resolve the one ``OffPolicyConfig``, the seed fork's 0.9.x flags, neighbouring tools'
names, ``--smoke_test``, and ``launch`` (upstream's ``__main__`` run with our hooks)."""

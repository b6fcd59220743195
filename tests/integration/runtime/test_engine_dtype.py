"""``--vllm_dtype``: resolution against ``--ds.param_dtype`` and the patched engine creation."""

import pytest

from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.engine_dtype import resolve_engine_dtype
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings


@pytest.mark.parametrize("requested,param,expected", [
    ("auto", "bf16", "bfloat16"), ("auto", "fp16", "float16"),
    ("bfloat16", "bf16", "bfloat16"), ("float16", "fp16", "float16"),
])
def test_auto_follows_the_trainers_param_dtype(requested, param, expected):
    assert resolve_engine_dtype(requested, param) == expected


@pytest.mark.parametrize("requested,param", [("float16", "bf16"), ("bfloat16", "fp16")])
def test_an_engine_dtype_the_weight_sync_would_refuse_is_a_contradiction(requested, param):
    with pytest.raises(ValueError, match="contradicts --ds.param_dtype"):
        resolve_engine_dtype(requested, param)


def test_upstream_hard_codes_bfloat16_and_the_weight_sync_requires_equal_dtypes():
    """The facts this flag rests on, read from upstream 0.11.2's source."""
    import inspect

    from openrlhf.trainer.ray import vllm_engine, vllm_worker_wrap

    assert '"dtype": "bfloat16"' in inspect.getsource(vllm_engine.create_vllm_engines)
    assert "assert dtype == self.model_config.dtype" in inspect.getsource(vllm_worker_wrap.WorkerWrap.update_weight)


class Recorder:
    """Stands in for ``RolloutRayActor.options`` (which would start a vLLM engine)."""

    def __init__(self):
        self.kwargs = None

    def __call__(self, **options):
        recorder = self

        class Handle:
            def remote(self, *args, **kwargs):
                recorder.kwargs = kwargs

        return Handle()


@pytest.mark.parametrize("topk", [0, 4])
def test_engines_are_created_with_the_resolved_dtype(monkeypatch, topk):
    from openrlhf.trainer.ray import vllm_engine

    recorder = Recorder()
    monkeypatch.setattr(vllm_engine.RolloutRayActor, "options", recorder)
    patches.install(OffPolicySettings(engine_dtype="float16", logprobs_topk=topk))
    try:
        # what create_vllm_engines does for each engine (upstream's actor_kwargs, abridged)
        vllm_engine.RolloutRayActor.options(num_cpus=1, num_gpus=1).remote(model="m", dtype="bfloat16",
                                                                           max_logprobs=1)
    finally:
        patches.undo()
    assert recorder.kwargs["dtype"] == "float16"
    assert recorder.kwargs["max_logprobs"] == max(1, topk)  # composes with the top-K patch


def test_without_a_resolved_dtype_upstream_is_untouched(monkeypatch):
    from openrlhf.trainer.ray import vllm_engine

    recorder = Recorder()
    monkeypatch.setattr(vllm_engine.RolloutRayActor, "options", recorder)
    patches.install(OffPolicySettings())
    try:
        assert vllm_engine.RolloutRayActor.options is recorder
    finally:
        patches.undo()

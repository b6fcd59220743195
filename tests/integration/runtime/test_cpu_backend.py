"""The CPU backend (integration/runtime/cpu_backend.py): gloo broadcast, flash-attn placeholders, Ray resources."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from openrlhf_offpolicy.integration.runtime import cpu_backend
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_RANK0 = textwrap.dedent("""
    import sys, torch
    from openrlhf_offpolicy.integration.runtime.cpu_backend import GlooBroadcastGroup
    group = GlooBroadcastGroup("127.0.0.1", int(sys.argv[1]), 0, 2)
    g = torch.Generator().manual_seed(0)
    bf16 = torch.tensor([1.0, -0.0, float("nan"), float("inf"), 3.1415926, -1e-30]).to(torch.bfloat16)
    f32 = torch.randn(6, 5, generator=g).t()  # non-contiguous
    i64 = torch.tensor([2 ** 62 + 1, -3, 0, 7])
    for t in (bf16, f32, i64):
        group.broadcast(t, src=0)
    torch.save({"bf16": bf16, "f32": f32, "i64": i64}, sys.argv[2])
    group.close()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gloo_group_broadcasts_bf16_noncontiguous_and_int64_tensors_bitwise(tmp_path):
    port = _free_port()
    sent_path = tmp_path / "sent.pt"
    rank0 = subprocess.Popen([sys.executable, "-c", _RANK0, str(port), str(sent_path)],
                             env=dict(os.environ, PYTHONPATH=REPO), stderr=subprocess.PIPE, text=True)
    try:
        group = cpu_backend.GlooBroadcastGroup("127.0.0.1", port, 1, 2)
        bf16 = torch.zeros(6, dtype=torch.bfloat16)
        f32 = torch.zeros(6, 5).t()  # the receiving tensor is non-contiguous too
        i64 = torch.zeros(4, dtype=torch.int64)
        returned = [group.broadcast(t, src=0) for t in (bf16, f32, i64)]
        group.close()
        assert rank0.wait(timeout=60) == 0, rank0.stderr.read()
    finally:
        if rank0.poll() is None:
            rank0.kill()
    sent = torch.load(sent_path)
    assert returned[0] is bf16 and returned[1] is f32
    assert torch.equal(bf16.view(torch.int16), sent["bf16"].view(torch.int16))  # NaN and -0.0 bits included
    assert not f32.is_contiguous()
    assert torch.equal(f32.contiguous().view(torch.int32), sent["f32"].contiguous().view(torch.int32))
    assert torch.equal(i64, sent["i64"])


_FLASH = textwrap.dedent("""
    import importlib.util, sys
    if importlib.util.find_spec("flash_attn") is not None:
        print("SKIP flash_attn is installed"); sys.exit(0)
    from openrlhf_offpolicy.integration.runtime.flash_attn_placeholder import (_FlashAttnPlaceholders,
                                                                       install_flash_attn_placeholder)
    assert install_flash_attn_placeholder() is True
    assert install_flash_attn_placeholder() is True
    assert sum(isinstance(f, _FlashAttnPlaceholders) for f in sys.meta_path) == 1
    from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input
    from flash_attn.utils.distributed import all_gather
    for fn in (index_first_axis, pad_input, rearrange, unpad_input, all_gather):
        try:
            fn(1)
        except RuntimeError as e:
            assert "flash-attn" in str(e)
        else:
            raise AssertionError("placeholder returned")
    try:
        import flash_attn.ops.triton.cross_entropy
    except ImportError:
        pass
    else:
        raise AssertionError("cross_entropy imported")
    import torch
    from openrlhf.models.utils import log_probs_from_logits
    logits = torch.randn(2, 5, 11, dtype=torch.float32)
    labels = torch.randint(0, 11, (2, 5))
    ref = logits.double().log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    got = log_probs_from_logits(logits.clone(), labels)
    assert torch.allclose(got.double(), ref, atol=1e-5), (got, ref)
    print("OK")
""")


def test_flash_attn_placeholders_import_but_refuse_calls_and_leave_triton_cross_entropy_missing():
    """In a fresh process without tests/stubs: upstream's module-level imports work, its fallback runs."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-c", _FLASH], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.stdout.strip().endswith("OK")


def test_replay_buffer_targets_the_cpu_and_current_device_is_the_cpu_again_after_it(monkeypatch):
    """Both replacements of the CPU backend, as the table installs them: upstream's f"cuda:{index}"
    gets an index inside the buffer's __init__ only, and no module attribute is swapped."""
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    class Buffer(NaiveReplayBuffer):
        pass

    current_device = cpu_backend.cpu_device(torch.cuda.current_device, None)
    monkeypatch.setattr(torch.cuda, "current_device", current_device)
    Buffer.__init__ = cpu_backend.cpu_replay_buffer(NaiveReplayBuffer.__init__, None)
    buffer = Buffer(sample_batch_size=2)
    assert buffer.target_device == torch.device("cpu")
    assert buffer.sample_batch_size == 2
    assert torch.cuda.current_device is current_device
    assert torch.cuda.current_device() == torch.device("cpu")


def test_cpu_device_and_noop_replacements():
    assert cpu_backend.cpu_device(torch.cuda.current_device, None)() == torch.device("cpu")
    assert cpu_backend.cuda_noop(torch.cuda.set_device, None)(3) is None

    calls = []
    mesh = cpu_backend.cpu_device_mesh(lambda device, *a, **k: calls.append((device, a, k)), None)
    mesh("cuda", (2,), mesh_dim_names=("dp",))
    mesh("meta", (1,))
    assert calls == [("cpu", ((2,),), {"mesh_dim_names": ("dp",)}), ("meta", ((1,),), {})]


def test_ray_init_declares_gpus_and_cpus_for_a_local_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = cpu_backend.ray_init_kwargs({"runtime_env": {"env_vars": {"A": "1"}}})
    assert out["num_gpus"] == cpu_backend.DECLARED_GPUS > 0
    assert out["num_cpus"] == cpu_backend.DECLARED_CPUS > 0
    assert out["runtime_env"] == {"env_vars": {"A": "1"}}
    assert cpu_backend.ray_init_kwargs({"num_cpus": 3})["num_cpus"] == 3  # the caller's own value wins


@pytest.mark.parametrize("how", ["env", "kwarg"])
def test_ray_init_leaves_an_existing_clusters_resources_alone(monkeypatch, how):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    kwargs = {"namespace": "x"}
    if how == "env":
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    else:
        kwargs["address"] = "auto"
    out = cpu_backend.ray_init_kwargs(dict(kwargs))
    assert out == kwargs and "num_gpus" not in out


def test_worker_env_selects_deepspeeds_cpu_accelerator(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert cpu_backend.in_cpu_run()
    monkeypatch.delenv("DS_ACCELERATOR")
    assert not cpu_backend.in_cpu_run()
    assert cpu_backend.WORKER_ENV["DS_ACCELERATOR"] == "cpu"

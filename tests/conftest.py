"""Test configuration.

``tests/stubs`` holds a stand-in for ``flash_attn`` (CUDA-only, cannot be installed here), put on
``sys.path`` only when the real package is absent and only for the tests. See tests/stubs/README.md.
"""

import importlib.util
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # tests import their helpers as top-level modules (reference, helpers)
if importlib.util.find_spec("flash_attn") is None:
    sys.path.insert(0, os.path.join(_HERE, "stubs"))


@pytest.fixture(scope="session")
def gloo():
    """A one-process gloo group, as upstream's trainer code expects torch.distributed."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Qwen2 causal LM saved to disk (no download)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path)

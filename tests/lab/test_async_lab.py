"""The async lab on a tiny configuration: tables, plot, measured staleness, precision mismatch."""

import json

import torch

from openrlhf_offpolicy.lab.async_lab import forward_mismatch, main
from openrlhf_offpolicy.lab.model import TinyConfig, TinyTransformer
from openrlhf_offpolicy.lab.train import LabConfig


def test_a_tiny_sweep_writes_tables_plot_and_the_measured_staleness(tmp_path):
    base = LabConfig(prompt_len=4, warmup_steps=3, prompts_per_step=4, samples_per_prompt=4, eval_every=1,
                     eval_prompts=8)
    main(["--out", str(tmp_path), "--steps", "3", "--staleness", "0", "2", "--methods", "baseline",
          "--precisions", "fp32", "fp16", "--inline"], base=base)
    summary = json.load(open(tmp_path / "summary.json"))
    by_staleness = {row["staleness"]: row for row in summary["sweep"]}
    # steps 0, 1, 2 with a lag of 2: the engine's weights are 0, 1 and 2 updates old
    assert by_staleness[2]["measured_max"] == 2 and abs(by_staleness[2]["measured_mean"] - 1.0) < 1e-12
    assert by_staleness[0]["measured_max"] == 0 and by_staleness[0]["mismatch_k3"] < 1e-9
    assert by_staleness[2]["mismatch_k3"] > 0
    assert [row["precision"] for row in summary["precision"]] == ["fp32", "fp16"]
    text = open(tmp_path / "summary.md").read()
    assert "| baseline | 2 |" in text and "| fp16 |" in text
    assert (tmp_path / "staleness.png").stat().st_size > 10_000


def test_direct_forward_mismatch_is_zero_for_fp32_and_bf16_exceeds_fp16():
    config = TinyConfig(max_len=13)
    torch.manual_seed(0)
    state = TinyTransformer(config).state_dict()
    sequences = torch.randint(0, 11, (64, 13), generator=torch.Generator().manual_seed(0))
    out = forward_mismatch(config, state, sequences)
    assert out["fp32"]["kl_max"] == 0.0
    assert out["bf16"]["kl_mean"] > out["fp16"]["kl_mean"] > 0  # 8 vs 11 mantissa bits

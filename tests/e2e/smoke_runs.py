"""End-to-end runs: ``python -m openrlhf_offpolicy.cli.train_ppo_ray ... --smoke_test N`` in a subprocess.

Each run is upstream's real loop on the CPU backend (real Ray actors, DeepSpeed on gloo, upstream's
experience maker, replay buffer, ``ppo_train``, weight broadcast and checkpointing) with the
stand-in rollout engine, on a tiny random model. Tests assert what the run logged: the JSON line
the smoke test prints last (every ``train/*`` TensorBoard scalar, per step).
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_TIMEOUT_S = 420
# Model names: the smoke test builds the family's tiny random model (no download).
DENSE = "Qwen/Qwen2.5-0.5B"
MOE = "Qwen/Qwen3-30B-A3B"
DSV3 = "deepseek-ai/DeepSeek-V3"
# Flags every case shares: a small GRPO-style run without a reference model.
BASE = ["--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "4",
        "--vllm.num_engines", "1", "--algo.kl.init_coef", "0", "--actor.adam.lr", "1e-4"]


@dataclass
class Run:
    """A finished smoke run: its exit code, output and the logged steps."""

    returncode: int
    stdout: str
    stderr: str
    workdir: str

    @property
    def result(self) -> Dict:
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no JSON line; exit {self.returncode}\n{self.tail()}"
        return json.loads(lines[-1])

    @property
    def steps(self) -> List[Dict[str, float]]:
        return self.result["steps"]

    def tail(self, n: int = 60) -> str:
        return "\n".join((self.stdout + "\n" + self.stderr).splitlines()[-n:])

    def ok(self) -> "Run":
        assert self.returncode == 0, f"exit {self.returncode}\n{self.tail()}"
        return self


def run_cli(args: List[str], workdir: str, env_extra: Dict[str, str] = None) -> Run:
    """One ``train_ppo_ray`` process (the smoke directory is ``workdir``)."""
    env = dict(os.environ)
    extra = dict(env_extra or {})
    paths = [REPO, extra.pop("PYTHONPATH", "")] + env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    proc = subprocess.run([sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return Run(proc.returncode, proc.stdout, proc.stderr, workdir)



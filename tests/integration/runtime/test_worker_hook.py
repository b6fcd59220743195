"""The Ray worker setup hook: standard library only, fast, never touches CUDA; patches on import.

Ray runs the hook when a worker process starts, before the actor-creation task sets the worker's
``CUDA_VISIBLE_DEVICES``: a CUDA query there would pin every DeepSpeed actor of a node to GPU 0.
"""

import json
import os
import subprocess
import sys

from openrlhf_offpolicy.integration.runtime.patch_table import PATCHES
from openrlhf_offpolicy.integration.runtime.settings import ENV_VAR, OffPolicySettings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
STUBS = os.path.join(HERE, "..", "..", "stubs")
# Most worker-side entries of the table are active with these settings (routing replay excludes top-K).
SETTINGS = OffPolicySettings(loss_kwargs={"enable_vllm_is_correction": True, "vllm_is_correction_type": "tis"},
                             logprobs_topk=4, match_rollout_sampling=True, rollout_top_p=0.9,
                             advantage_estimator="reinforce_max")
WORKER_MODULES = sorted({p.module for p in PATCHES if not p.module.startswith(("ray", "openrlhf.utils.config"))})


def _run(script: str, **env_extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([STUBS, REPO])
    env[ENV_VAR] = SETTINGS.to_json()
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env,
                         cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_hook_imports_only_the_standard_library_and_our_settings_and_takes_under_0_2_s():
    report = _run(
        "import json, sys, time\n"
        "before = set(sys.modules)\n"
        "t0 = time.process_time()\n"
        "from openrlhf_offpolicy.integration.runtime import worker\n"
        "worker.setup()\n"
        "elapsed = time.process_time() - t0  # CPU time: a shared test machine's load does not count\n"
        "new = sorted(m.split('.')[0] for m in set(sys.modules) - before)\n"
        "print(json.dumps({'elapsed': elapsed, 'top_level': sorted(set(new))}))\n"
    )
    third_party = [m for m in report["top_level"]
                   if m not in sys.stdlib_module_names and m != "openrlhf_offpolicy" and not m.startswith("_")]
    assert third_party == [], f"the hook imported {third_party}"
    assert report["elapsed"] < 0.2, f"the hook took {report['elapsed']:.3f} s"


def test_the_hook_never_queries_cuda_and_every_patch_takes_effect_when_a_worker_imports_upstream():
    report = _run(
        "import json, sys\n"
        "import torch\n"
        "calls = []\n"
        "def trap(name):\n"
        "    def raise_(*a, **k):\n"
        "        calls.append(name)\n"
        "        raise RuntimeError(name + ' called by the setup hook')\n"
        "    return raise_\n"
        "saved = (torch.cuda.is_available, torch.cuda.device_count, getattr(torch._C, '_cuda_getDeviceCount', None))\n"
        "torch.cuda.is_available = trap('is_available')\n"
        "torch.cuda.device_count = trap('device_count')\n"
        "torch._C._cuda_getDeviceCount = trap('_cuda_getDeviceCount')\n"
        "from openrlhf_offpolicy.integration.runtime import worker\n"
        "worker.setup()\n"
        "# Ray now sets CUDA_VISIBLE_DEVICES and runs the actor task, which imports upstream:\n"
        "torch.cuda.is_available, torch.cuda.device_count = saved[:2]\n"
        "if saved[2] is None:\n"
        "    del torch._C._cuda_getDeviceCount\n"
        "else:\n"
        "    torch._C._cuda_getDeviceCount = saved[2]\n"
        "import importlib\n"
        f"for name in {WORKER_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "from openrlhf_offpolicy.integration.runtime import patches\n"
        "from openrlhf_offpolicy.integration.runtime.patch_table import PATCHES\n"
        "changed = []\n"
        "for p in PATCHES:\n"
        "    if p.symbol in patches.applied():\n"
        "        owner, name = p.owner_and_name()\n"
        "        changed.append([p.symbol, getattr(owner, name) is not patches.upstream_value(owner, name)])\n"
        "print(json.dumps({'calls': calls, 'applied': patches.applied(), 'changed': changed}))\n"
    )
    assert report["calls"] == []
    expected = sorted(p.symbol for p in PATCHES if p.module in WORKER_MODULES and p.active(SETTINGS))
    assert sorted(report["applied"]) == expected
    assert all(changed for _, changed in report["changed"]), report["changed"]

# make demo   the real pipeline on CPU (upstream train_ppo_ray, stand-in engine): no correction vs tis vs trm
#             -> demo_results/compare.png and TensorBoard logs
# make test   create .venv, install the project with every test dependency, run the suite (e2e runs included)
# make e2e-all  every registered preset as a two-step CPU run (outside make test)
# make lab    run the CPU lab (estimator bench + mismatch lab) on its defaults -> lab_results/
# make bench  every benchmark: loss (every preset vs upstream OpenRLHF 0.11.2 TIS; verl 0.9.1, TRL 1.16.0),
#             top-K and routing transport, routing replay, --match_rollout_sampling memory, bypass,
#             a whole training step on the CPU backend (heaviest configurations vs a plain step)
#             -> bench_results/ (summary.md)
# make lab-async  staleness sweep + rollout precision comparison (async lab) -> lab_results/async/
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# torch 2.13.0 (CPU build) installs from this machine's disk; an unpinned torch would pull CUDA wheels.
TORCH := torch==2.13.0
# The peers (verl, TRL, SkyRL, AReaL), --no-deps into their own folder: see the target below.
PEERS_DIR := bench_results/peers
VERL_IMPORTS := tensordict==0.15.3 pyvers==0.2.3 omegaconf==2.4.0 antlr4-python3-runtime==4.9.3 \
	codetiming==1.4.0 orjson==3.13.0

.PHONY: demo test e2e-all lab lab-async bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	touch $@

# Full CPU environment: upstream OpenRLHF 0.11.2 --no-deps plus everything it imports.
$(VENV)/.test: $(VENV)/.base pyproject.toml requirements-cpu.txt
	$(PIP) install -q -r requirements-cpu.txt
	# vLLM drags in torchvision/torchaudio builds that cannot load against the CPU torch.
	$(PIP) uninstall -q -y torchvision torchaudio || true
	$(PIP) install -q --no-build-isolation deepspeed==0.19.6
	$(PIP) install -q --no-deps openrlhf==0.11.2
	$(PIP) install -q -e '.[test,lab]'
	touch $@

# The lab needs torch, Ray and plotting only.
$(VENV)/.lab: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e '.[lab]' wandb
	touch $@

demo: $(VENV)/.test
	$(PY) -m openrlhf_offpolicy.cli.demo --out demo_results

# The peers' own functions (tests/corrections/test_peers.py) run in the suite: OFFPOLICY_PEERS_DIR makes a
# peer that does not import a failure.
test: $(VENV)/.test $(PEERS_DIR)/.complete
	OFFPOLICY_PEERS_DIR=$(PEERS_DIR) $(PY) -m pytest -q

e2e-all: $(VENV)/.test
	OFFPOLICY_E2E_ALL=1 $(PY) -m pytest -q tests/e2e

lab: $(VENV)/.lab
	$(PY) -m openrlhf_offpolicy.lab --out lab_results

lab-async: $(VENV)/.lab
	$(PY) -m openrlhf_offpolicy.lab.async_lab --out lab_results/async --inline

# The peers compared in bench_loss and tests/corrections/test_peers.py, --no-deps into their own folder
# (bench_loss and test_peers put it on sys.path), with the small modules verl's core_algos imports.
$(PEERS_DIR)/.complete: $(VENV)/.test
	$(PIP) install -q --no-deps --target $(PEERS_DIR) verl==0.9.1 trl==1.16.0 $(VERL_IMPORTS)
	# SkyRL and AReaL: test_peers reads single functions from their sources (SkyRL 0.4.0 declares Python >= 3.12).
	$(PIP) install -q --no-deps --ignore-requires-python --target $(PEERS_DIR) skyrl==0.4.0 areal==1.0.4
	touch $@

# Every benchmark, each in its own process (benchmarks/run_all.py), summary -> bench_results/summary.md
bench: $(VENV)/.test $(PEERS_DIR)/.complete
	$(PY) benchmarks/run_all.py --out bench_results

clean:
	rm -rf $(VENV) lab_results bench_results demo_results

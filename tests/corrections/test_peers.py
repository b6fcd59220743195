"""Our new policy losses against the peers' own functions, on the same float64 tensors.

verl 0.9.1, TRL 1.16.0, SkyRL 0.4.0 and AReaL 1.0.4 are not dependencies of the package. ``make test``
(and ``make bench``) installs them ``--no-deps`` into ``bench_results/peers``, with the six small
modules verl's ``core_algos`` imports (tensordict, pyvers, omegaconf, antlr4, codetiming, orjson), and
sets ``OFFPOLICY_PEERS_DIR``: then a peer that does not import is a failure, not a skip. Run alone
(plain ``pytest``), a test whose peer is missing is skipped. The folder goes at the end of
``sys.path`` for each test only (SkyRL ships top-level ``tests`` and ``scripts`` packages).
SkyRL's and AReaL's modules import their whole frameworks, so their functions are taken from the
installed source files as they are (``peer_functions``: the named top-level functions, run unmodified
with torch).

prime-rl (``prime_dppo``, ``ipo``) and ROLL (``topr``, segment IS) are not on PyPI: those methods are
tested against the formulas as read in the commits the README names (tests/reference.py).
"""

import ast
import importlib
import importlib.util
import os
import sys
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from helpers import random_inputs

from openrlhf_offpolicy.models import PolicyLoss


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS_REQUIRED = bool(os.environ.get("OFFPOLICY_PEERS_DIR"))
PEERS_DIR = os.path.abspath(os.environ.get("OFFPOLICY_PEERS_DIR") or os.path.join(REPO, "bench_results", "peers"))


@pytest.fixture(autouse=True)
def peers_on_path(monkeypatch):
    if os.path.isdir(PEERS_DIR):
        monkeypatch.setattr(sys, "path", [*sys.path, PEERS_DIR])


def peer_module(name):
    """The peer's module; skipped when it is not installed, unless ``make test`` installed the peers."""
    if PEERS_REQUIRED:
        return importlib.import_module(name)
    return pytest.importorskip(name)


def peer_functions(package, relative_path, names, **namespace):
    """The top-level functions ``names`` of ``package/relative_path`` (not imported: the package's
    ``__init__`` pulls in its framework), defined from the installed source with decorators and
    annotations dropped, in a namespace holding torch and ``namespace``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        if PEERS_REQUIRED:
            pytest.fail(f"{package} is not in {PEERS_DIR} (make test installs it)")
        pytest.skip(f"{package} is not installed")
    path = os.path.join(spec.submodule_search_locations[0], relative_path)
    tree = ast.parse(open(path).read())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    for node in nodes:
        node.decorator_list, node.returns = [], None
        for arg in node.args.args + node.args.kwonlyargs:
            arg.annotation = None
    assert {n.name for n in nodes} == set(names), f"{path} lacks {set(names) - {n.name for n in nodes}}"
    scope = {"torch": torch, **namespace}
    exec(compile(ast.fix_missing_locations(ast.Module(body=nodes, type_ignores=[])), path, "exec"), scope)
    return scope


def ours(loss_type, inputs, keep_rollout=False, **kwargs):
    fresh = {k: (v.detach().clone().requires_grad_() if k == "log_probs" else v) for k, v in inputs.items()}
    if not keep_rollout:
        fresh.pop("rollout_log_probs")
    loss = PolicyLoss(policy_loss_type=loss_type, **kwargs)(**fresh)[0]
    loss.backward()
    return loss.detach(), fresh["log_probs"].grad


def assert_same(a, b):
    """Equal up to the peers' 1e-8 guards in their denominators (relative differences ~1e-9)."""
    (la, ga), (lb, gb) = a, b
    print(f"max |loss diff| {abs(la - lb).item():.2e}, max |grad diff| {(ga - gb).abs().max().item():.2e}")
    assert torch.allclose(la, lb, rtol=1e-7, atol=1e-12), (la.item(), lb.item())
    assert torch.allclose(ga, gb, rtol=1e-7, atol=1e-12), (ga - gb).abs().max()


# ----------------------------------------------------------------------------- verl 0.9.1
def verl_loss(name, inputs, **config):
    core_algos = peer_module("verl.trainer.ppo.core_algos")
    fn = core_algos.get_policy_loss_fn(name)
    log_probs = inputs["log_probs"].detach().clone().requires_grad_()
    cfg = SimpleNamespace(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, global_batch_info={},
                          policy_loss=SimpleNamespace(**config))
    for key in ("clip_ratio", "clip_ratio_low", "clip_ratio_high"):
        if key in config:
            setattr(cfg, key, config[key])
    loss, _ = fn(inputs["old_log_probs"], log_probs, inputs["advantages"], inputs["action_mask"], "token-mean", cfg)
    loss.backward()
    return loss.detach(), log_probs.grad


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("clip", [(0.4, 0.4), (0.2, 0.3)])
def test_gmpo_equals_verl_geo_mean(seed, clip):
    inputs = random_inputs(batch=6, length=10, seed=seed, policy_scale=0.4, per_sequence_advantage=True)
    theirs = verl_loss("geo_mean", inputs, clip_ratio_low=clip[0], clip_ratio_high=clip[1])
    assert_same(ours("gmpo", inputs, gmpo_clip_range=(-clip[0], clip[1])), theirs)


@pytest.mark.parametrize("seed", range(4))
def test_clip_cov_equals_verl_with_the_same_torch_seed(seed):
    inputs = random_inputs(batch=8, length=12, seed=seed, policy_scale=0.3)
    params = dict(clip_cov_ratio=0.05, clip_cov_lb=-0.5, clip_cov_ub=2.0)
    torch.manual_seed(100 + seed)
    theirs = verl_loss("clip_cov", inputs, **params)
    torch.manual_seed(100 + seed)
    assert_same(ours("clip_cov", inputs, **params), theirs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ratio,coef", [(0.0002, 1.0), (0.1, 0.5)])
def test_kl_cov_equals_verl(seed, ratio, coef):
    inputs = random_inputs(batch=8, length=12, seed=seed, policy_scale=0.3)
    theirs = verl_loss("kl_cov", inputs, kl_cov_ratio=ratio, ppo_kl_coef=coef)
    assert_same(ours("kl_cov", inputs, kl_cov_ratio=ratio, kl_cov_coef=coef), theirs)


# ----------------------------------------------------------------------------- TRL 1.16.0
class _Accelerator:
    num_processes = 1
    sync_gradients = False

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(loss_type, inputs, importance_sampling_level="token", **args):
    """TRL's own ``GRPOTrainer._compute_loss`` on a stand-in trainer whose forward returns our log-probs."""
    grpo = peer_module("trl.trainer.grpo_trainer")
    log_probs = inputs["log_probs"].detach().clone().requires_grad_()
    mask = inputs["action_mask"]
    batch, length = mask.shape
    defaults = dict(vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, delta=None,
                    steps_per_generation=1, use_bias_correction_kl=False)
    trainer = SimpleNamespace(
        loss_type=loss_type, importance_sampling_level=importance_sampling_level, beta=0.0,
        epsilon_low=args.pop("epsilon_low", 0.2), epsilon_high=args.pop("epsilon_high", 0.2),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        accelerator=_Accelerator(), args=SimpleNamespace(**{**defaults, **args}),
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (log_probs, torch.zeros_like(log_probs), None),
        get_gamma_weights=grpo.GRPOTrainer.get_gamma_weights,
    )
    ids = torch.zeros(batch, length, dtype=torch.long)
    loss = grpo.GRPOTrainer._compute_loss(trainer, None, {
        "prompt_ids": ids[:, :1], "prompt_mask": torch.ones(batch, 1, dtype=torch.long), "completion_ids": ids,
        "completion_mask": mask, "advantages": inputs["advantages"], "old_per_token_logps": inputs["old_log_probs"],
        "num_items_in_batch": mask.sum(),
    })
    loss.backward()
    return loss.detach(), log_probs.grad


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k,lam", [((2.0, 3.0), (3.0, 2.0)), ((1.5, 4.0), (2.5, 0.5))])
def test_vespo_equals_trl(seed, k, lam):
    inputs = random_inputs(batch=6, length=10, seed=seed, policy_scale=0.1)
    theirs = trl_loss("vespo", inputs, vespo_k_pos=k[0], vespo_k_neg=k[1], vespo_lambda_pos=lam[0],
                      vespo_lambda_neg=lam[1])
    assert_same(ours("vespo", inputs, vespo_k=k, vespo_lambda=lam), theirs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.1, 0.28)])
def test_luspo_equals_trl(seed, eps):
    inputs = random_inputs(batch=6, length=10, seed=seed, policy_scale=0.3)
    theirs = trl_loss("luspo", inputs, importance_sampling_level="sequence", epsilon_low=eps[0], epsilon_high=eps[1])
    assert_same(ours("luspo", inputs, clip_eps_low=eps[0], clip_eps_high=eps[1]), theirs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.05, 0.7])
def test_dro_equals_verl(seed, beta):
    inputs = random_inputs(batch=6, length=10, seed=seed, policy_scale=0.4)
    theirs = verl_loss("dro", inputs, dro_beta=beta)
    assert_same(ours("dro", inputs, dro_beta=beta), theirs)


# ----------------------------------------------------------------------------- SkyRL 0.4.0
def skyrl_rollout_is(inputs, eps_low, eps_high):
    """SkyRL's ``rollout_is_policy_loss`` (its off-policy correction off), summed; we divide by the tokens."""
    utils = "backends/skyrl_train/utils/"
    helpers = peer_functions("skyrl", utils + "torch_utils.py", ["safe_exp_delta", "masked_mean"])
    scope = peer_functions("skyrl", utils + "ppo_utils.py", ["rollout_is_policy_loss", "reduce_loss"], **helpers,
                           apply_off_policy_correction=lambda loss, old, roll, mask, cfg: (loss, mask, {}))
    log_probs = inputs["log_probs"].detach().clone().requires_grad_()
    config = SimpleNamespace(eps_clip_low=eps_low, eps_clip_high=eps_high, off_policy_correction=None)
    mask = inputs["action_mask"]
    loss, _ = scope["rollout_is_policy_loss"](log_probs, inputs["old_log_probs"], inputs["advantages"], config,
                                              loss_mask=mask, rollout_logprobs=inputs["rollout_log_probs"])
    loss = loss / mask.sum()
    loss.backward()
    return loss.detach(), log_probs.grad


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.1, 0.5)])
def test_glm5_is_equals_skyrl_rollout_is(seed, eps):
    """SkyRL exponentiates in float32 (``safe_exp_delta``): equal to float32 rounding of the ratio."""
    inputs = random_inputs(batch=6, length=10, seed=seed, policy_scale=0.2, mismatch_scale=0.2)
    theirs = skyrl_rollout_is(inputs, *eps)
    (la, ga), (lb, gb) = ours("glm5_is", inputs, keep_rollout=True, glm5_is_clip_range=(1 - eps[0], 1 + eps[1])), theirs
    print(f"max |loss diff| {abs(la - lb).item():.2e}, max |grad diff| {(ga - gb).abs().max().item():.2e}")
    assert torch.allclose(la, lb, rtol=1e-6, atol=1e-9) and torch.allclose(ga, gb, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- AReaL 1.0.4
def areal_actor(*names):
    return peer_functions("areal", "trainer/ppo/actor.py", names)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [0.005, 0.04])
def test_m2po_rejects_the_tokens_areal_masks(seed, tau):
    """AReaL's M = (behaviour - proximal)^2 is our (log pi_roll - log pi_old)^2: same tokens kept."""
    from openrlhf_offpolicy.corrections import CORRECTIONS
    from openrlhf_offpolicy.corrections.batch import make_policy_batch
    from openrlhf_offpolicy.corrections.rejection import apply_rejection, parse_rejection

    inputs = random_inputs(batch=8, length=12, seed=seed, mismatch_scale=(0.02, 0.5))
    mask = inputs["action_mask"] > 0
    scope = areal_actor("_apply_m2po_masking", "_get_m2po_loss_mask")
    theirs = scope["_apply_m2po_masking"](inputs["rollout_log_probs"], inputs["old_log_probs"], mask, tau)
    batch, _, _ = make_policy_batch(inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"],
                                    inputs["action_mask"], inputs["rollout_log_probs"])
    uncorrected = CORRECTIONS.get("none").fn(batch, None)
    rejected = apply_rejection(uncorrected, batch, parse_rejection([f"m2po:{tau}"])).rejected
    assert torch.equal(mask & ~rejected, theirs) and rejected.any()


@pytest.mark.parametrize("lags", [[0, 1, 2, 3, 7], [4, 4, 1, 0, 2]])
def test_a3po_proximal_log_probs_equal_areals_loglinear_approximation(lags):
    """``--a3po_alpha versions`` with AReaL's version arithmetic, on a per-token version tensor."""
    from openrlhf_offpolicy.corrections.a3po import alpha_from_version_lag

    inputs = random_inputs(batch=5, length=9, seed=1, policy_scale=0.3, mismatch_scale=0.3)
    lp, roll = inputs["log_probs"].detach(), inputs["rollout_log_probs"]
    v_theta = 10
    versions = (v_theta - torch.tensor(lags)).unsqueeze(1).expand_as(lp)
    scope = areal_actor("compute_prox_logp_approximations")
    scope.update(PROX_APPROX_METHOD_LOGLINEAR="loglinear", PROX_APPROX_METHODS_ALL=["loglinear"])
    theirs = scope["compute_prox_logp_approximations"](roll, lp, versions, v_theta, method="loglinear")["loglinear"]
    alpha = alpha_from_version_lag(torch.tensor(lags)).unsqueeze(1)
    mine = roll + alpha * (lp - roll)
    print(f"max |log pi_prox diff| {(mine - theirs).abs().max().item():.2e}")
    # AReaL forms alpha in float32 (``versions.float()``): equal to float32 rounding of alpha.
    assert torch.allclose(mine, theirs, rtol=1e-7, atol=1e-7)

import pytest

from openrlhf_offpolicy.corrections import CORRECTIONS, DIVERGENCES, POLICY_LOSSES, Param, Registry


def test_decorator_registers_name_aliases_params_and_meta():
    reg = Registry("widget", defaults={"fast": False})

    @reg.register("a", aliases=("alpha",), params=(Param("a_width", 1.0, "width"),), source="paper", fast=True)
    def a_fn():
        return "a"

    entry = reg.get("alpha")
    assert entry.name == "a" and entry.fn is a_fn and entry.fast and entry.source == "paper"
    assert entry.params[0].name == "a_width"
    assert reg.names() == ["a"] and reg.names(with_aliases=True) == ["a", "alpha"]


def test_registering_a_name_twice_is_an_error():
    reg = Registry("widget")
    reg.register("a")(lambda: None)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("b", aliases=("a",))(lambda: None)


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown correction 'xyz'; choose from \[.*'tis'.*\]"):
        CORRECTIONS.get("xyz")


def test_every_spec_method_is_registered_with_a_source():
    spec_corrections = {"tis", "icepop", "seq-mask-tis", "reinforce_pro", "prefix-mask", "geo-mask", "seq-tis",
                        "seq-mis", "trm"}
    spec_losses = {"ppo", "gspo", "gspo_token", "sapo", "cispo", "dppo", "is_reshape"}
    assert spec_corrections <= set(CORRECTIONS.names(with_aliases=True))
    assert spec_losses <= set(POLICY_LOSSES.names())
    assert {"k2", "k3", "binary_tv", "binary_kl"} <= set(DIVERGENCES.names())
    for entry in list(CORRECTIONS) + list(POLICY_LOSSES):
        assert entry.fn.__doc__ or entry.name == "none", f"{entry.name} has no docstring"
        assert entry.source or entry.name == "none", f"{entry.name} has no source"


def test_param_validation_normalises_pairs_and_checks_ranges():
    p = Param("band", (0.0, 5.0), "a band", nargs=2, check=lambda v: None if v[0] < v[1] else "low < high")
    assert p.validate([0.5, 2]) == (0.5, 2.0)
    with pytest.raises(ValueError, match="low < high"):
        p.validate((3, 2))
    with pytest.raises(ValueError, match="must be set"):
        p.validate(None)


def test_entries_are_typed_and_a_misspelt_registration_field_is_a_type_error():
    from openrlhf_offpolicy.corrections.losses import PolicyLossEntry

    entry = POLICY_LOSSES.get("dppo")
    assert isinstance(entry, PolicyLossEntry) and entry.reads_rollout and entry.divergence_param == "dppo_divergence"
    assert not hasattr(type(entry), "__getattr__") or type(entry).__getattr__ is object.__getattribute__
    with pytest.raises(TypeError, match="unknown registration field"):
        POLICY_LOSSES.register("x", sequence_levle=True)
    with pytest.raises(AttributeError):
        entry.no_such_field


def test_registries_list_the_same_methods_in_the_same_order_whatever_is_imported_first():
    import subprocess
    import sys

    code = ("import {first}\nfrom openrlhf_offpolicy.corrections.losses import POLICY_LOSSES\n"
            "from openrlhf_offpolicy.corrections.gates import CORRECTIONS\n"
            "print(POLICY_LOSSES.names(), CORRECTIONS.names())")
    outputs = {
        first: subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True,
                              check=True).stdout
        for first in ("openrlhf_offpolicy.corrections.vespo", "openrlhf_offpolicy.corrections.trust_region",
                      "openrlhf_offpolicy.corrections.losses")
    }
    assert len(set(outputs.values())) == 1, outputs
    assert outputs["openrlhf_offpolicy.corrections.losses"].strip() == f"{POLICY_LOSSES.names()} {CORRECTIONS.names()}"


def test_method_parameters_form_a_typed_frozen_dataclass():
    import dataclasses

    from openrlhf_offpolicy.corrections import resolve_config

    cfg = resolve_config(policy_loss_type="sapo", sapo_tau_pos=2)
    assert dataclasses.is_dataclass(cfg.params) and cfg.params.sapo_tau_pos == 2.0
    assert cfg.param("sapo_tau_pos") == cfg.params.sapo_tau_pos == dict(cfg.params)["sapo_tau_pos"] == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.params.sapo_tau_pos = 3.0
    with pytest.raises(AttributeError, match="no field or method parameter"):
        cfg.param("sapo_tau")


@pytest.mark.parametrize("kwargs", [
    dict(sapo_tau_pos=float("inf")), dict(sapo_tau_neg=float("nan")), dict(is_reshape_width=1e39),
    dict(dppo_ratio_cap=1e39), dict(sapo_tau_pos=1e-40), dict(cispo_clip_range=(0.0, float("inf"))),
    dict(clip_eps_high=float("nan")), dict(dual_clip=float("inf")),
    dict(enable_vllm_is_correction=True, vllm_is_truncated_threshold=(0.5, 1e39)),
    dict(is_correction_level="token", is_correction_threshold=(float("-inf"), 2.0)),
])
def test_non_finite_non_float32_and_denormal_values_are_refused(kwargs):
    from openrlhf_offpolicy.corrections import resolve_config

    with pytest.raises(ValueError, match="finite|float32|denormal"):
        resolve_config(**kwargs)


@pytest.mark.parametrize("flag,value", [("--sapo_tau_pos", "inf"), ("--is_reshape_width", "1e39"),
                                        ("--dppo_ratio_cap", "nan"), ("--trm_max_delta", "1e-45")])
def test_the_cli_refuses_the_same_values_with_exit_status_2(flag, value, capsys):
    from helpers import MINIMAL_UPSTREAM_ARGV, dry_run

    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + [flag, value], capsys)
    assert status == 2 and ("finite" in err or "float32" in err or "denormal" in err), err


def test_a_resolved_config_survives_pickle_and_deepcopy():
    import copy
    import pickle

    from openrlhf_offpolicy.corrections import resolve_config

    cfg = resolve_config(policy_loss_type="vespo", vespo_k=(1.0, 2.0))
    assert pickle.loads(pickle.dumps(cfg)) == cfg == copy.deepcopy(cfg)

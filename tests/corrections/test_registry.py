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

"""Attack suite, settings: the JSON round trip is exact, tuples included."""

from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings

VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False,
                      allow_infinity=False) | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=6)


def test_a_tuple_valued_setting_round_trips_exactly():
    s = OffPolicySettings(loss_kwargs={"vllm_is_truncated_threshold": (0.5, 5.0), "rejection": ("veto:0.1",)})
    assert OffPolicySettings.from_json(s.to_json()) == s


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), VALUES, max_size=4), st.integers(0, 20))
def test_any_json_able_settings_round_trip_exactly(loss_kwargs, topk):
    s = OffPolicySettings(loss_kwargs=loss_kwargs, logprobs_topk=topk)
    assert OffPolicySettings.from_json(s.to_json()) == s

"""The example reward function upstream loads from --reward.remote_url examples/scripts/reward_math.py."""

import importlib.util
import os

import torch

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "scripts", "reward_math.py")


def load():
    spec = importlib.util.spec_from_file_location("reward_math", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reward_is_one_for_the_right_boxed_answer_and_zero_otherwise():
    reward = load()
    prompts = ["Q: 1+1? ", "Q: half of 3? ", "Q: x? ", "Q: y? "]
    queries = [p + a for p, a in zip(prompts, [
        "so the answer is \\boxed{2}.", "it is \\boxed{1.50}", "\\boxed{\\frac{1}{2}} then \\boxed{7}", "no box"])]
    out = reward.reward_func(queries, prompts, ["2", "1.5", "7", "3"])
    assert torch.equal(out["rewards"], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(out["scores"], out["rewards"])


def test_nested_braces_are_kept_inside_the_box():
    reward = load()
    assert reward.last_boxed("x \\boxed{\\frac{a}{b}} y") == "\\frac{a}{b}"
    assert not reward.same_answer("3", "4") and reward.same_answer("$4$", "4")

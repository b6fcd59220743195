"""Verifiable 0/1 math reward for upstream's ``--reward.remote_url path/to/reward.py``.

Upstream (OpenRLHF 0.11.2) calls ``reward_func(queries, prompts, labels)`` with the decoded
prompt+response and expects ``{"rewards", "scores", "extra_logs"}`` tensors of ``len(queries)``.
The answer is the last ``\\boxed{...}`` of the response, compared with the label after light
normalisation (spaces, ``$``, a trailing ``.``, and numeric equality where both parse).
"""

import re

import torch


def last_boxed(text: str):
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return text[i:j]
            depth -= 1
    return None


def normalise(answer: str) -> str:
    return re.sub(r"\s+", "", answer).strip("$").rstrip(".")


def same_answer(predicted, label) -> bool:
    if predicted is None or label is None:
        return False
    a, b = normalise(predicted), normalise(str(label))
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


def reward_func(queries, prompts, labels):
    correct = []
    for query, prompt, label in zip(queries, prompts, labels):
        response = query[len(prompt):] if query.startswith(prompt) else query
        correct.append(float(same_answer(last_boxed(response), label)))
    rewards = torch.tensor(correct)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"accuracy": rewards}}

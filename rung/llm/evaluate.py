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


def score_each(task: Task, examples: list[Example], texts: list[str]) -> list[tuple[float, str]]:
    """(reward, reason) of each of `texts` (response i answers examples[i])."""
    return [(float(value), reason) for value, reason in
            (task.reward(example, text) for example, text in zip(examples, texts, strict=True))]


def score(task: Task, examples: list[Example], texts: list[str]) -> tuple[torch.Tensor, Counter]:
    """(B,) float32 rewards of `texts` (response i answers examples[i]) and the count of each
    reason the task gave; a reward function never ends a run, whatever the model wrote."""
    scored = score_each(task, examples, texts)
    return torch.tensor([v for v, _ in scored], dtype=torch.float32), Counter(r for _, r in scored)


def evaluate_task(model: Any, tokenizer: Any, task: Task, examples: list[Example], *, max_new_tokens: int,
                  chat_template: bool, batch_size: int = 32, samples: list[dict] | None = None) -> dict[str, float]:
    """Greedy responses to held-out `examples`: {"accuracy", "reward_mean", "response_length"}.
    Where `samples` is given, each response is appended to it as {"prompt", "answer",
    "response", "reward", "reason"}."""
    was_training = model.training
    model.eval()
    scored: list[tuple[float, str]] = []
    lengths = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        rollout = generate(model, tokenizer, prompt_texts(tokenizer, chunk, chat_template),
                           max_new_tokens=max_new_tokens, temperature=0.0)
        chunk_scored = score_each(task, chunk, rollout.texts)
        scored += chunk_scored
        lengths.append(rollout.response_mask.sum(1).float())
        if samples is not None:
            samples.extend({"prompt": e.prompt, "answer": e.answer, "response": text, "reward": v, "reason": reason}
                           for e, text, (v, reason) in zip(chunk, rollout.texts, chunk_scored, strict=True))
    model.train(was_training)
    r = torch.tensor([v for v, _ in scored], dtype=torch.float32)
    return {"accuracy": float((r >= task.max_reward - 1e-9).float().mean()), "reward_mean": float(r.mean()),
            "response_length": float(torch.cat(lengths).mean())}


def sampled_accuracy(model: Any, tokenizer: Any, task: Task, examples: list[Example], *, samples: int,
                     temperature: float, max_new_tokens: int, chat_template: bool, seed: int = 0,
                     prompts_per_batch: int = 8) -> dict[str, float]:
    """`samples` responses to each example at `temperature`: {"pass_at_k": the share of examples
    with at least one right response, "sample_accuracy": the share of right responses}. What RL
    can draw on: GRPO mostly turns answers a model can sample into its greedy ones, so pass@k
    before training bounds much of what it gains. Batch b is seeded with seed + b (reproducible)."""
    from rung.llm.generation import generate_grouped

    was_training = model.training
    model.eval()
    right: list[int] = []
    for b, i in enumerate(range(0, len(examples), prompts_per_batch)):
        chunk = examples[i:i + prompts_per_batch]
        rollout = generate_grouped(model, tokenizer, prompt_texts(tokenizer, chunk, chat_template), samples,
                                   max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + b)
        scored = score_each(task, [e for e in chunk for _ in range(samples)], rollout.texts)
        right += [sum(v >= task.max_reward - 1e-9 for v, _ in scored[j * samples:(j + 1) * samples])
                  for j in range(len(chunk))]
    model.train(was_training)
    return {"pass_at_k": sum(r > 0 for r in right) / len(right), "sample_accuracy": sum(right) / (len(right) * samples)}


PROMPT_SEED_STRIDE = 1_000_003


def evaluate_run_folder(run_dir: Any, prompts: int | None = None, prompt_seed: int = 0,
                        weights: str = "average", sample_count: int = 0, temperature: float = 0.8) -> dict[str, Any]:
    """`rung eval` for a language-model run: the greedy accuracy and mean reward of the policy the
    run trained (its weight average where it kept one, unless `weights` is "raw") on `prompts`
    test-split problems of its task (default: as many as the run evaluated on) drawn with
    `prompt_seed`. Seed 0 gives the run's own held-out problems; any other seed other problems of
    the same split, a check that a gain is not peculiar to the problems a run was tuned on.
    With `sample_count` > 0 it also draws that many responses a problem at `temperature` and adds
    pass@k and the sampled accuracy (`sampled_accuracy`).
    Writes eval.json and the greedy responses to eval_samples/eval_seed<S>_<weights>.jsonl."""
    import json
    from pathlib import Path

    from rung import algos, checkpoint
    from rung.config import from_dict
    from rung.errors import UserError
    from rung.llm.config import load_task
    from rung.llm.models import load_run
    from rung.run import write_json_atomic

    run_dir = Path(run_dir)
    ckpt = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    cfg = from_dict(algos.get(ckpt["algo"]).Config, ckpt["config"])
    n = cfg.eval_prompts if prompts is None else prompts
    if n <= 0 or prompt_seed < 0:
        raise UserError(f"--prompts must be > 0 and --prompt-seed >= 0, got {n} and {prompt_seed}")
    if sample_count < 0 or temperature < 0:
        raise UserError(f"--samples and --temperature must be >= 0, got {sample_count} and {temperature}")
    if weights == "raw" and "weight_average" not in ckpt:
        raise UserError(f"{run_dir} kept no weight average (trained without --ema-decay); its weights are the raw "
                        "ones, drop --weights raw")
    model, tokenizer = load_run(run_dir, ckpt, weights)
    task = load_task(cfg)
    # reasoning-gym seeds its item i with seed + i, so seeds 0 and 1 would share all but one
    # problem; a prime stride larger than any draw keeps every prompt seed's problems apart.
    examples = task.prompts("test", n, prompt_seed * PROMPT_SEED_STRIDE)
    samples: list[dict] = []
    result = evaluate_task(model, tokenizer, task, examples, samples=samples, max_new_tokens=cfg.max_new_tokens,
                           chat_template=cfg.chat_template)
    if sample_count:
        result.update(sampled_accuracy(model, tokenizer, task, examples, samples=sample_count, temperature=temperature,
                                       max_new_tokens=cfg.max_new_tokens, chat_template=cfg.chat_template,
                                       seed=prompt_seed * PROMPT_SEED_STRIDE),
                      samples=sample_count, temperature=temperature)
    scored = weights if "weight_average" in ckpt else "raw"
    folder = run_dir / "eval_samples"
    folder.mkdir(exist_ok=True)
    (folder / f"eval_seed{prompt_seed}_{scored}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = {"algo": ckpt["algo"], "task": cfg.task, "step": ckpt["step"], "prompts": n, "prompt_seed": prompt_seed,
           "weights": scored, **result}
    write_json_atomic(run_dir / "eval.json", out)
    return out

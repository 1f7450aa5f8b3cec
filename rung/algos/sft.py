"""SFT: supervised fine-tuning of a language model on prompt/response pairs (the first stage of
InstructGPT, Ouyang et al. 2022), the warm-up that gives GRPO or PPO a policy which already
answers in the task's format.

The loss is the cross-entropy of the response tokens only (`sft_loss`; the prompt is context, not
a target), averaged over every response token of the batch on every process (token_mean over
global counts), so micro-batching and the number of processes do not change the gradient. Each
response ends with the tokenizer's eos token, so that the model learns to stop.

Data: --dataset FILE, a JSONL file of {"prompt": ..., "response": ...} lines, walked in a
reshuffled order each pass (--epochs sets the number of passes); or, with no dataset, a stream
of the task's train-split prompts with their reference answers, written as the task grades them
(the math tasks: "#### <answer>", the format MATH_PROMPT asks for, after a worked solution one
operation a line for chain_sum; target_token: the target;
humaneval: the canonical solution). --task always names the held-out evaluation, scored greedily
before and after training as in GRPO.

Simplified: prompt and response are tokenized apart and joined as token ids, which is what the
model sees at generation time (the prompt's tokens, then its own); a response longer than
--max-new-tokens is cut to it (the share is logged as llm/truncated_frac); no packing of several
examples into one sequence; no validation split of --dataset.

Run:  rung train sft --model smollm2-135m --task arithmetic --total-steps 200
      rung train sft --model smollm2-135m --dataset pairs.jsonl --epochs 3 --task arithmetic
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rung.errors import UserError
from rung.llm.config import LLMConfig, load_policy, load_task
from rung.llm.evaluate import prompt_texts
from rung.llm.logprobs import logits_to_keep_kwargs, position_ids_from_mask
from rung.llm.loop import finish_training, global_counts, start_training, step_seed
from rung.llm.tasks import Example, ReasoningGymTask, Task
from rung.objectives import masked_aggregate, sft_loss
from rung.run import Run, TrainResult


@dataclass
class Config(LLMConfig):
    dataset: str | None = None
    """JSONL file of {"prompt": ..., "response": ...} lines to imitate (default: the task's train split and answers)."""
    epochs: int = 0
    """Passes over --dataset; sets the number of optimizer steps, overriding --total-steps (0: train for --total-steps)."""
    learning_rate: float = 2e-5
    """AdamW learning rate (TRL's SFT default)."""

    @property
    def budget(self) -> int:
        if self.epochs == 0:
            return self.total_steps
        # The progress bar needs the step count before the run reads the data; WORLD_SIZE is what
        # torchrun sets and rung.distributed.ddp.init reads.
        return num_steps(self, len(load_dataset(self.dataset)), int(os.environ.get("WORLD_SIZE", "1")))

    def validate(self) -> None:
        super().validate()
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        if self.epochs > 0 and not self.dataset:
            raise UserError("--epochs counts passes over --dataset, and a task's train split is a stream; "
                            "pass --dataset FILE, or use --total-steps")
        if self.dataset:
            load_dataset(self.dataset)  # a bad file fails here, before the run folder is made


def num_steps(cfg: Config, num_examples: int, world: int) -> int:
    """Optimizer steps of the run: --total-steps, or enough for --epochs passes over the dataset
    at batch_size examples per process per step."""
    if cfg.epochs == 0:
        return cfg.total_steps
    return math.ceil(cfg.epochs * num_examples / (cfg.batch_size * world))


def load_dataset(path: str) -> list[tuple[str, str]]:
    """(prompt, response) pairs of a JSONL file; blank lines are skipped, anything else that is
    not an object with non-empty string fields "prompt" and "response" is a UserError naming its line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--dataset {path} does not exist; pass a JSONL file of {{\"prompt\": ..., \"response\": ...}} lines")
    pairs = []
    try:
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and other breaks unescaped.
        lines = file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise UserError(f"--dataset {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"--dataset {path} line {n} is not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"--dataset {path} line {n} is a JSON {type(row).__name__}, not an object "
                            "with \"prompt\" and \"response\"")
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str) or not row[key]:
                found = "missing" if key not in row else f"{type(row[key]).__name__} {row[key]!r:.40}"
                raise UserError(f"--dataset {path} line {n} needs a non-empty string \"{key}\" ({found})")
        pairs.append((row["prompt"], row["response"]))
    if not pairs:
        raise UserError(f"--dataset {path} holds no examples")
    return pairs


def reference_response(task: Task, example: Example) -> str:
    """The task's reference answer written as a completion the task's reward gives full marks."""
    if example.answer is None:
        raise UserError(f"task '{task.name}' has no reference answers to imitate; pass --dataset FILE of "
                        "prompt/response pairs")
    if "solution" in example.meta:  # a worked solution where the task writes one (chain_sum)
        return example.meta["solution"]
    # The math tasks grade what follows "####" (MATH_PROMPT asks for it on the last line).
    return f"#### {example.answer}" if isinstance(task, ReasoningGymTask) else example.answer


def make_agent(cfg: Config, device: torch.device | str = "cpu"):
    """(model, tokenizer): the policy."""
    return load_policy(cfg, torch.device(device))


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("sft", cfg, resume=resume, force=force, multi_process=True)
    device, world, rank = run.device, run.dist.world_size, run.dist.rank
    model, tokenizer = make_agent(cfg, device)
    task = load_task(cfg)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {cfg.model} has no eos token, so a response cannot teach the model to stop")
    pairs = load_dataset(cfg.dataset) if cfg.dataset else None
    if pairs is None:
        reference_response(task, task.prompts("train", 1, 0)[0])  # a task without answers fails now
    total = num_steps(cfg, len(pairs), world) if pairs else cfg.total_steps
    if pairs and cfg.epochs == 0 and run.dist.is_main and not resume:
        run.logger.info(f"{len(pairs)} examples in {cfg.dataset}: {total} steps are "
                        f"{total * cfg.batch_size * world / len(pairs):.2f} passes over them")
    training, start = start_training(run, cfg, model, tokenizer, task)
    training.total_steps = total
    optimizer, modules, held_out = training.optimizer, training.modules, training.held_out
    step = start
    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        if pairs:
            examples, responses = _dataset_batch(pairs, cfg, step, rank, world)
        else:
            examples = task.prompts("train", cfg.batch_size, step_seed(cfg.seed, step, rank))
            responses = [reference_response(task, e) for e in examples]
        # The prompt as generation will see it (chat template or not), so training matches use.
        batch = list(zip(prompt_texts(tokenizer, examples, cfg.chat_template), responses, strict=True))
        prompt_ids, prompt_mask, response_ids, mask, cut = _collate(
            batch, tokenizer, cfg, device, getattr(model.config, "max_position_embeddings", None))
        B = mask.shape[0]
        num_tokens, _ = global_counts(mask, world)

        optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = Counter()
        for i in range(0, B, cfg.micro_batch_size):
            rows = slice(i, i + cfg.micro_batch_size)
            logits = _response_logits(model, prompt_ids[rows], prompt_mask[rows], response_ids[rows], mask[rows])
            per_token, sft_stats = sft_loss(logits, response_ids[rows], mask[rows])
            # Global normaliser: micro-batch losses on every rank sum to the batch's token mean;
            # the world factor undoes all_reduce_grads' average over processes.
            loss = world * masked_aggregate(per_token, mask[rows], "token_mean", num_tokens=num_tokens)
            loss.backward()
            stats["losses/train"] += float(loss.detach()) / world
            stats["llm/token_accuracy"] += float(sft_stats["accuracy"]) * float(mask[rows].sum()) / float(num_tokens / world)
        norm = training.step(world, step)
        if norm is not None:
            stats["losses/grad_norm"] = norm
        elapsed = time.perf_counter() - t0

        # Loss and token accuracy are this process's share of the batch (a rank-0 view under DDP).
        metrics = {**stats, "llm/response_length": float(mask.sum(1).float().mean()), "llm/truncated_frac": cut,
                   "llm/tokens": float(num_tokens), "llm/samples_per_s": B / elapsed, "time/update": elapsed}
        if pairs:
            metrics["charts/epoch"] = step * cfg.batch_size * world / len(pairs)
        run.log(step, step, metrics, [], [], sps=B / elapsed)
        held_out.maybe(step, total, f"train loss {metrics['losses/train']:.3f}")
        run.maybe_checkpoint(step, step, modules)

    extra = {"dataset": cfg.dataset, "dataset_examples": len(pairs)} if pairs else {}
    return finish_training(run, training, step, extra, train_key="llm/token_accuracy", eval_key="eval/accuracy",
                           ylabel="accuracy")


def _dataset_batch(pairs: list[tuple[str, str]], cfg: Config, step: int, rank: int, world: int
                   ) -> tuple[list[Example], list[str]]:
    """This process's batch_size (prompt, response) pairs of step `step`. The data is an endless
    stream of passes, each in its own shuffled order, and step s takes the s-th slice of
    batch_size * world, so a pass may end inside a step and nothing is dropped. The order is a
    function of (seed, pass) alone: a resumed run needs no data-loader state."""
    n = len(pairs)
    first = (step - 1) * cfg.batch_size * world + rank * cfg.batch_size
    orders: dict[int, list[int]] = {}
    chosen = []
    for i in range(first, first + cfg.batch_size):
        epoch = i // n
        if epoch not in orders:
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)).tolist()
        chosen.append(pairs[orders[epoch][i % n]])
    return [Example(p, None) for p, _ in chosen], [r for _, r in chosen]


def _collate(batch: list[tuple[str, str]], tokenizer: Any, cfg: Config, device: torch.device,
             positions: int | None = None):
    """Token ids of (prompt text, response text) pairs in a rollout's layout: prompts (B, P)
    left-padded, responses (B, T) right-padded and ending in eos, with their bool masks; and
    the share of responses cut to max_new_tokens. A pair longer than the model's `positions`
    is a UserError (the embedding lookup would fail with an IndexError)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = tokenizer([p for p, _ in batch], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r for _, r in batch], add_special_tokens=False)["input_ids"]
    responses = [r + [tokenizer.eos_token_id] for r in responses]
    cut = sum(len(r) > cfg.max_new_tokens for r in responses) / len(responses)
    responses = [r[:cfg.max_new_tokens] for r in responses]
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not p:
            raise UserError(f"prompt {batch[i][0]!r:.40} tokenizes to nothing; a language model needs at least one token")
        if positions is not None and len(p) + len(r) > positions:
            raise UserError(f"prompt {batch[i][0]!r:.40} is {len(p)} tokens and its response {len(r)} (at most "
                            f"--max-new-tokens): more than the model's {positions} positions; shorten the prompt or "
                            "lower --max-new-tokens")
    P, T = max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.full((len(batch), P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(batch), P), dtype=torch.bool)
    response_ids = torch.full((len(batch), T), pad, dtype=torch.long)
    response_mask = torch.zeros((len(batch), T), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p), True
        response_ids[i, :len(r)], response_mask[i, :len(r)] = torch.tensor(r), True
    return prompt_ids.to(device), prompt_mask.to(device), response_ids.to(device), response_mask.to(device), cut


def _response_logits(model: Any, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """(B, T, V) float32 logits predicting each response token (position P-1+t predicts token t)."""
    T = response_ids.shape[1]
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask), use_cache=False,
                **logits_to_keep_kwargs(model, T + 1))
    return out.logits[:, -(T + 1):-1].float()

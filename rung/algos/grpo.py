"""GRPO: group-relative policy optimisation on a language model (Shao et al. 2024, DeepSeekMath).

Each step samples `num_generations` responses to each of `batch_size` prompts, scores them with
the task's reward, and uses the reward minus its group's mean (divided by the group's std unless
--scale-rewards none, Dr. GRPO, Liu et al. 2025) as every token's advantage, with no value
function. The loss is PPO's clipped surrogate per token, optionally with DAPO's asymmetric
clip (--clip-high > --clip-low, Yu et al. 2025) and a KL penalty to the frozen starting model
(k3 estimator, --kl-coef). Tokens are aggregated by --loss-aggregation: token_mean (DAPO: every
token of the batch weighs the same), seq_mean (the original GRPO: mean per sequence, then over
sequences) or constant (Dr. GRPO: sum over tokens / (sequences * max_new_tokens)). The
normalisers are global counts over the whole batch and every process, so micro-batching and
the number of processes do not change the gradient.

--advantage process replaces the one reward per response with a reward per reasoning step,
DeepSeekMath's process supervision (sec. 4.1.3): step rewards are normalised over the group's
steps and each token's advantage sums those of its own and later steps, so a wrong line is
charged to itself, not to the right lines after it. It needs a task that can check each step
(chain_sum: one worked operation a line).

Deviations and simplifications: one generation batch feeds --update-epochs optimizer passes
over it (1 by default, where the ratio is exactly 1 at the update and only the clip's
gradient-zeroing never triggers, as in TRL's default); the reference model is a frozen copy of
the starting weights (with LoRA, the base with adapters turned off), never refreshed.

--dynamic-sampling is DAPO's (Yu et al. 2025): a group whose responses all score the same has
zero advantage and only dilutes a token mean, so such groups are dropped and more prompts drawn
(at most --max-sampling-rounds batches a step) until the batch has `batch_size` groups with a
signal; the first ones found are kept. A step that finds none updates on its first batch, whose
advantages are zero, as it would without the flag. Metrics average over every batch drawn.

Run:  rung train grpo --model smollm2-135m --task arithmetic
      rung train grpo --model tiny-gpt --task target_token --task-options target=7
      rung train grpo --model RUN_DIR --task chain_sum --advantage process
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch

from rung.errors import UserError
from rung.llm.config import LLMConfig, load_policy, load_task
from rung.llm.generation import Rollout, concat_rollouts, padding_id, select_rows
from rung.llm.logprobs import token_logprobs
from rung.llm.loop import (
    finish_training,
    frozen_reference,
    global_counts,
    rollout_logprobs,
    rollout_metrics,
    sample_step,
    start_training,
)
from rung.objectives import clipped_token_pg_loss, group_advantages, kl_penalty, masked_aggregate, process_advantages
from rung.run import Run, TrainResult


@dataclass
class Config(LLMConfig):
    num_generations: int = 8
    """Responses sampled per prompt: the group whose mean reward is each response's baseline."""
    update_epochs: int = 1
    """Optimizer passes over each batch of responses (GRPO's mu); above 1 the clip starts to bind."""
    clip_low: float = 0.2
    """The probability ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.2
    """The ratio is clipped above at 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    kl_coef: float = 0.0
    """Weight of the k3 estimate of KL(policy || starting model) in the loss (0: no reference model is kept)."""
    loss_aggregation: Literal["token_mean", "seq_mean", "constant"] = "token_mean"
    """How per-token losses are summed up: token_mean (DAPO), seq_mean (GRPO), constant (Dr. GRPO)."""
    scale_rewards: Literal["std", "none"] = "std"
    """Divide advantages by the group's reward std (GRPO) or not (Dr. GRPO)."""
    advantage: Literal["outcome", "process"] = "outcome"
    """outcome: one reward per response, every token's advantage (GRPO); process: a reward per
    step, for tasks with a step checker (chain_sum), DeepSeekMath's process supervision."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop groups whose advantages are all zero (every response equal)
    and draw more prompts until the batch holds `batch_size` groups that carry a signal."""
    max_sampling_rounds: int = 4
    """With --dynamic-sampling, the most batches of prompts one step draws before it updates on
    what it has (DAPO's cap on generation batches)."""

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise UserError(f"--num-generations must be >= 2 (a group of one has no baseline), got {self.num_generations}")
        if self.max_sampling_rounds < 1:
            raise UserError(f"--max-sampling-rounds must be >= 1, got {self.max_sampling_rounds}")
        if self.update_epochs < 1:
            raise UserError(f"--update-epochs must be >= 1, got {self.update_epochs}")
        for name in ("clip_low", "clip_high", "kl_coef"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


def make_agent(cfg: Config, device: torch.device | str = "cpu"):
    """(model, tokenizer): the policy."""
    return load_policy(cfg, torch.device(device))


def step_tensors(tokenizer, rollout, steps: list[list[tuple[int, float]]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each response's steps, [(end character, reward)] as the task's `step_rewards` gives them, as
    (B, S) tensors for `process_advantages`: rewards, the response position of the token in which
    each step ends, and the mask of real steps (S is the most steps of any response)."""
    B, S = len(steps), max(len(s) for s in steps)
    rewards, ends, mask = torch.zeros(B, S), torch.zeros(B, S, dtype=torch.long), torch.zeros(B, S, dtype=torch.bool)
    for i, row in enumerate(steps):
        positions = rollout.response_mask[i].nonzero().flatten().tolist()
        ids = rollout.response_ids[i, positions].tolist()
        # The text each prefix of the response decodes to, as the rollout's texts were decoded: a
        # step ends in the first token whose prefix reaches the step's last character.
        reach = [len(tokenizer.decode(ids[:k + 1], skip_special_tokens=True)) for k in range(len(ids))]
        for j, (end, reward) in enumerate(row):
            # The last step is the rest of the response, to its last token: the end-of-text token
            # decodes to nothing, so searching by length would leave it out of every step.
            k = len(ids) - 1 if j == len(row) - 1 else next((k for k, n in enumerate(reach) if n >= end), len(ids) - 1)
            rewards[i, j], ends[i, j], mask[i, j] = reward, positions[max(k, 0)] if positions else 0, True
    return rewards, ends, mask


def score_batch(task, tokenizer, examples, rollout, rewards: torch.Tensor, cfg: Config, device
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages of one sampled batch, (B,) for outcome rewards or (B, T) per token for process
    rewards, and the process metrics (none for outcome rewards)."""
    G = cfg.num_generations
    if cfg.advantage == "outcome":
        return group_advantages(rewards.to(device), G, scale=cfg.scale_rewards), {}
    steps = [task.step_rewards(e, text) for e, text in zip([e for e in examples for _ in range(G)], rollout.texts)]
    step_rewards, step_ends, step_mask = step_tensors(tokenizer, rollout, steps)
    advantages = process_advantages(step_rewards, step_ends, step_mask, G, rollout.response_mask.shape[1],
                                    scale=cfg.scale_rewards).to(device)
    worked = [r for row in steps for _, r in row[:-1]]
    return advantages, {"llm/step_accuracy": sum(worked) / max(len(worked), 1)}


def informative_groups(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """(num_groups,) bool: the groups with a non-zero advantage anywhere. `group_advantages` and
    `process_advantages` give exactly 0 to every response of a group whose rewards are all equal."""
    return advantages.reshape(advantages.shape[0] // group_size, -1).ne(0).any(1)


def draw_batch(model, tokenizer, task, cfg: Config, step: int, rank: int, gen: torch.Generator, device
               ) -> tuple[Rollout, torch.Tensor, dict[str, float]]:
    """The step's training batch: (rollout, its advantages, llm/* metrics averaged over every batch
    drawn). Without --dynamic-sampling, one batch as sampled; with it, only the groups that carry a
    signal, from as many batches as it takes (see the module docstring)."""
    G = cfg.num_generations
    kept: list[tuple[Rollout, torch.Tensor]] = []
    first: tuple[Rollout, torch.Tensor] | None = None
    drawn: list[dict[str, float]] = []
    num_kept = 0
    for attempt in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
        examples, rollout, rewards, reasons = sample_step(model, tokenizer, task, cfg, step, rank, G, gen, attempt)
        advantages, process = score_batch(task, tokenizer, examples, rollout, rewards, cfg, device)
        signal = informative_groups(advantages, G)
        drawn.append({**rollout_metrics(task, rollout, rewards, reasons), **process,
                      "llm/informative_groups": float(signal.float().mean())})
        first = first or (rollout, advantages)
        if not cfg.dynamic_sampling:
            break
        groups = signal.nonzero().flatten()[:cfg.batch_size - num_kept].cpu()
        if len(groups):
            rows = (groups[:, None] * G + torch.arange(G)).flatten()
            kept.append((select_rows(rollout, rows), advantages[rows.to(advantages.device)]))
            num_kept += len(groups)
        if num_kept == cfg.batch_size:
            break
    metrics = {k: sum(d.get(k, 0.0) for d in drawn) / len(drawn) for k in dict.fromkeys(k for d in drawn for k in d)}
    metrics["llm/sampling_rounds"] = float(len(drawn))
    if cfg.dynamic_sampling:
        metrics["llm/kept_groups"] = num_kept / cfg.batch_size
    if not kept:
        kept = [first]
    if len(kept) == 1:
        return kept[0][0], kept[0][1], metrics
    rollout = concat_rollouts([r for r, _ in kept], padding_id(tokenizer))
    T = rollout.response_ids.shape[1]
    advantages = torch.cat([a if a.dim() == 1 else torch.nn.functional.pad(a, (0, T - a.shape[1])) for _, a in kept])
    return rollout, advantages, metrics


def accumulate_gradients(model, rollout, advantages: torch.Tensor, cfg: Config,
                         counts: tuple[torch.Tensor, torch.Tensor], world: int,
                         old_logprobs: torch.Tensor | None = None,
                         ref_logprobs: torch.Tensor | None = None) -> dict[str, float]:
    """Backward of one pass of the loss over this process's rollout, `cfg.micro_batch_size` rows
    at a time, adding into the parameters' .grad; returns the pass's loss statistics (each already
    divided by `cfg.update_epochs`). Old log-probs default to the current ones (ratio 1), the
    KL term is left out without reference log-probs.

    Every micro-batch on every process divides by `counts`, the whole batch's (tokens, sequences)
    over all `world` processes (`global_counts`), and the loss is multiplied by `world` to undo DDP's gradient
    average, so neither the micro-batch size nor the number of processes changes the gradient."""
    mask = rollout.response_mask
    num_tokens, num_sequences = counts
    stats: dict[str, float] = Counter()
    for i in range(0, mask.shape[0], cfg.micro_batch_size):
        rows = slice(i, i + cfg.micro_batch_size)
        logp = token_logprobs(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                              rollout.response_ids[rows], mask[rows], temperature=cfg.temperature)
        old = logp.detach() if old_logprobs is None else old_logprobs[rows]
        per_token, pg_stats = clipped_token_pg_loss(logp, old, advantages[rows], mask[rows],
                                                    clip_low=cfg.clip_low, clip_high=cfg.clip_high)
        if ref_logprobs is not None:
            kl = kl_penalty(logp, ref_logprobs[rows], "k3", mask=mask[rows])
            per_token = per_token + cfg.kl_coef * kl
            stats["llm/kl"] += float(masked_aggregate(kl.detach(), mask[rows], "token_mean",
                                                      num_tokens=num_tokens / world)) / cfg.update_epochs
        loss = world * masked_aggregate(per_token, mask[rows], cfg.loss_aggregation, num_tokens=num_tokens,
                                        num_sequences=num_sequences, max_tokens=cfg.max_new_tokens)
        loss.backward()
        share = float(mask[rows].sum()) / float(num_tokens / world) / cfg.update_epochs
        stats["losses/policy"] += float(loss.detach()) / world / cfg.update_epochs
        for k in ("clipfrac", "approx_kl"):
            stats[f"losses/{k}"] += float(pg_stats[k]) * share
    return stats


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("grpo", cfg, resume=resume, force=force, multi_process=True)
    device, world = run.device, run.dist.world_size
    task = load_task(cfg)
    if cfg.advantage == "process" and not getattr(task, "has_steps", False):
        raise UserError(f"--advantage process needs a task that checks each step (chain_sum); '{cfg.task}' does not")
    model, tokenizer = make_agent(cfg, device)
    reference = frozen_reference(model, cfg)
    training, start = start_training(run, cfg, model, tokenizer, task)
    optimizer, modules, held_out = training.optimizer, training.modules, training.held_out
    # Every rank draws its own prompts and samples; the generator is reseeded per step so that a
    # resumed run samples what an uninterrupted one would.
    gen = torch.Generator(device=device)
    G = cfg.num_generations
    step = start
    for step in range(start + 1, cfg.total_steps + 1):
        t0 = time.perf_counter()
        rollout, advantages, drawn = draw_batch(model, tokenizer, task, cfg, step, run.dist.rank, gen, device)
        mask = rollout.response_mask
        t_rollout = time.perf_counter() - t0
        B = cfg.batch_size * G * int(drawn["llm/sampling_rounds"])  # responses generated, kept or not
        counts = global_counts(mask, world)
        ref_logprobs = old_logprobs = None
        with torch.no_grad():
            if reference is not None:
                ref_logprobs = rollout_logprobs(reference, rollout, cfg.micro_batch_size, cfg.temperature)
            if cfg.update_epochs > 1:
                old_logprobs = rollout_logprobs(model, rollout, cfg.micro_batch_size, cfg.temperature)
        t1 = time.perf_counter()
        stats: dict[str, float] = Counter()
        for _epoch in range(cfg.update_epochs):
            optimizer.zero_grad(set_to_none=True)
            stats.update(accumulate_gradients(model, rollout, advantages, cfg, counts, world, old_logprobs,
                                              ref_logprobs))
            norm = training.step(world, step)
            if norm is not None:
                stats["losses/grad_norm"] = norm
        t_update = time.perf_counter() - t1

        metrics = {**stats, **drawn, "llm/tokens": float(counts[0]),
                   "llm/samples_per_s": B / (t_rollout + t_update), "time/rollout": t_rollout, "time/update": t_update}
        run.log(step, step, metrics, [], [], sps=B / (t_rollout + t_update), progress_value=metrics["llm/reward_mean"])
        held_out.maybe(step, cfg.total_steps, f"train reward {metrics['llm/reward_mean']:.3f}")
        run.maybe_checkpoint(step, step, modules)

    return finish_training(run, training, step)

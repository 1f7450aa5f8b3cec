"""REINFORCE on a language model with a leave-one-out baseline: RLOO (Ahmadian et al. 2024,
"Back to Basics"), i.e. Williams' (1992) REINFORCE with a baseline, treating a whole response as
one action.

Each step samples `num_generations` (G) responses to each of `batch_size` prompts and scores
them with the task's reward. A response's advantage is its score minus the mean score of the
other G - 1 responses to its prompt, a baseline that does not depend on the response itself and so
adds no bias (`rloo_advantages`). With --kl-coef > 0 the score first loses kl_coef times the
sequence's KL to the frozen starting model (k1, summed over its tokens, as in Ahmadian et al.: the
penalty is part of the reward, not a loss term), estimated from the log-probs recorded at sampling.
The loss is -advantage * log pi(token) on every response token (`reinforce_token_loss`); one
gradient step per batch, so the samples are always on-policy and there is no ratio to clip.

Tokens are aggregated by --loss-aggregation. The default, constant (sum over each sequence's
tokens / (sequences * max_new_tokens)), is the sequence-level REINFORCE gradient, the mean over
sequences of A * grad log pi(sequence), scaled by the constant 1/max_new_tokens; token_mean
(DAPO) and seq_mean (GRPO) reweight long and short responses. The normalisers are global counts,
so micro-batching and the number of processes do not change the gradient.

Simplified: no reward whitening across the batch (the leave-one-out baseline centres each group;
Adam absorbs the scale), the reference is never refreshed, and with LoRA the reference is the base
model with the adapters switched off.

Run:  rung train reinforce_llm --model smollm2-135m --task arithmetic
      rung train reinforce_llm --model tiny-gpt --task target_token --task-options target=7
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch

from rung.errors import UserError
from rung.llm.config import LLMConfig, load_policy, load_task
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
from rung.objectives import kl_penalty, masked_aggregate, reinforce_token_loss, rloo_advantages
from rung.run import Run, TrainResult


@dataclass
class Config(LLMConfig):
    num_generations: int = 8
    """Responses sampled per prompt: each one's baseline is the mean reward of the others."""
    kl_coef: float = 0.0
    """Weight of KL(policy || starting model), k1 summed over a response, subtracted from its reward (0: no reference kept)."""
    loss_aggregation: Literal["token_mean", "seq_mean", "constant"] = "constant"
    """How per-token losses are summed up: constant (sequence-level REINFORCE), token_mean (DAPO), seq_mean (GRPO)."""

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise UserError(f"--num-generations must be >= 2 (a leave-one-out baseline needs another sample), "
                            f"got {self.num_generations}")
        if self.kl_coef < 0:
            raise UserError(f"--kl-coef must be >= 0, got {self.kl_coef}")


def make_agent(cfg: Config, device: torch.device | str = "cpu"):
    """(model, tokenizer): the policy."""
    return load_policy(cfg, torch.device(device))


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("reinforce_llm", cfg, resume=resume, force=force, multi_process=True)
    device, world = run.device, run.dist.world_size
    model, tokenizer = make_agent(cfg, device)
    task = load_task(cfg)
    reference = frozen_reference(model, cfg)
    training, start = start_training(run, cfg, model, tokenizer, task)
    optimizer, modules, held_out = training.optimizer, training.modules, training.held_out
    gen = torch.Generator(device=device)
    G = cfg.num_generations
    step = start
    for step in range(start + 1, cfg.total_steps + 1):
        t0 = time.perf_counter()
        _, rollout, rewards, reasons = sample_step(model, tokenizer, task, cfg, step, run.dist.rank, G, gen)
        t_rollout = time.perf_counter() - t0
        mask = rollout.response_mask
        B = mask.shape[0]
        num_tokens, num_sequences = global_counts(mask, world)
        scores = rewards.to(device)
        stats: dict[str, float] = Counter()
        if reference is not None:
            # The policy's own log-probs come from the sampler: the weights have not moved since,
            # so a second forward would only recompute them (to float rounding).
            with torch.no_grad():
                kl = kl_penalty(rollout.logprobs, rollout_logprobs(reference, rollout, cfg.micro_batch_size,
                                                                   cfg.temperature), "k1", mask=mask)
            scores = scores - cfg.kl_coef * kl.sum(-1)
            stats["llm/kl"] = float(kl.sum(-1).mean())
        advantages = rloo_advantages(scores, G)

        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for i in range(0, B, cfg.micro_batch_size):
            rows = slice(i, i + cfg.micro_batch_size)
            logp = token_logprobs(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                                  rollout.response_ids[rows], mask[rows], temperature=cfg.temperature)
            per_token, _ = reinforce_token_loss(logp, advantages[rows], mask[rows])
            # Global normalisers: the micro-batch losses on every rank sum to the whole batch's;
            # the world factor undoes all_reduce_grads' average over processes.
            loss = world * masked_aggregate(per_token, mask[rows], cfg.loss_aggregation, num_tokens=num_tokens,
                                            num_sequences=num_sequences, max_tokens=cfg.max_new_tokens)
            loss.backward()
            stats["losses/policy"] += float(loss.detach()) / world
        norm = training.step(world, step)
        if norm is not None:
            stats["losses/grad_norm"] = norm
        t_update = time.perf_counter() - t1

        metrics = {**stats, **rollout_metrics(task, rollout, rewards, reasons),
                   "llm/advantage_abs_mean": float(advantages.abs().mean()), "llm/tokens": float(num_tokens),
                   "llm/samples_per_s": B / (t_rollout + t_update), "time/rollout": t_rollout, "time/update": t_update}
        run.log(step, step, metrics, [], [], sps=B / (t_rollout + t_update), progress_value=metrics["llm/reward_mean"])
        held_out.maybe(step, cfg.total_steps, f"train reward {metrics['llm/reward_mean']:.3f}")
        run.maybe_checkpoint(step, step, modules)

    return finish_training(run, training, step)

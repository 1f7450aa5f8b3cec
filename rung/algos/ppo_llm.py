"""PPO on a language model's tokens, as in RLHF (Ziegler et al. 2019; Ouyang et al. 2022,
InstructGPT), with the task's reward (a verifier) in place of a learned reward model.

Each step samples `num_generations` responses (1 by default: the value function, not a group,
is the baseline) to each of `batch_size` prompts and scores them. Every response token is an
action: its reward is -kl_coef times the k1 estimate of KL(policy || starting model) at that token,
plus the response's score on its last token (`token_rewards`). A value head, a linear layer on the
policy's last hidden state, predicts the return from the state before each token; advantages are
GAE over the response tokens (`token_gae`, gamma 1 and lambda 0.95 as in TRL), whitened over the
batch's tokens (`masked_whiten`, global statistics under DDP). The rollout then feeds
--update-epochs passes of --num-minibatches optimizer steps each, on the clipped surrogate per
token plus vf_coef times the clipped value loss, both averaged over the minibatch's tokens on every
process (token_mean over global counts, so micro-batching and the number of processes do not
change the gradient).

Deviations and simplifications: policy and value share the transformer (a value head, as in
Ziegler et al.'s and early TRL's code) rather than InstructGPT's separate value model initialised
from the reward model; the head starts at zero. No entropy bonus, no adaptive KL controller
(kl_coef is fixed), no reward whitening. A response cut by max_new_tokens is treated as finished
(nothing is bootstrapped after it, as in TRL and verl). With LoRA the reference is the base model
with the adapters switched off, and the value head is trained in full alongside the adapters.

Run:  rung train ppo_llm --model smollm2-135m --task arithmetic
      rung train ppo_llm --model tiny-gpt --task target_token --task-options target=7
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from rung.config import in_range
from rung.distributed import ddp
from rung.errors import UserError
from rung.llm.config import LLMConfig, load_policy, load_task
from rung.llm.logprobs import logits_to_keep_kwargs, position_ids_from_mask, scale_logits
from rung.llm.loop import (
    finish_training,
    frozen_reference,
    global_counts,
    rollout_logprobs,
    rollout_metrics,
    sample_step,
    start_training,
    step_seed,
)
from rung.objectives import (
    clipped_token_pg_loss,
    kl_penalty,
    masked_aggregate,
    masked_whiten,
    token_gae,
    token_rewards,
    value_loss,
)
from rung.run import Run, TrainResult


@dataclass
class Config(LLMConfig):
    num_generations: int = 1
    """Responses sampled per prompt (the value head is the baseline, so one is enough)."""
    update_epochs: int = 4
    """Passes over each rollout (TRL's num_ppo_epochs)."""
    num_minibatches: int = 1
    """Optimizer steps per pass; batch_size * num_generations responses must divide into them."""
    clip_coef: float = 0.2
    """The probability ratio is clipped to [1 - clip_coef, 1 + clip_coef]."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values with clip_coef (InstructGPT, TRL)."""
    vf_coef: float = 0.1
    """Value loss weight (rung's value loss has no factor 1/2: TRL's vf_coef 0.1 is 0.05 here)."""
    kl_coef: float = 0.05
    """Weight of the per-token k1 KL(policy || starting model) subtracted from the reward (0: no reference model is kept)."""
    gamma: float = 1.0
    """Discount over response tokens."""
    gae_lambda: float = 0.95
    """GAE lambda: 0 is one-step TD, 1 is Monte-Carlo."""
    norm_adv: bool = True
    """Whiten advantages over the rollout's response tokens (over all processes under DDP)."""

    def validate(self) -> None:
        super().validate()
        for name in ("num_generations", "update_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if (self.batch_size * self.num_generations) % self.num_minibatches:
            raise UserError(f"--num-minibatches {self.num_minibatches} does not divide the rollout of "
                            f"{self.batch_size * self.num_generations} responses (batch_size * num_generations)")
        for name in ("vf_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.clip_coef > 0:
            raise UserError(f"--clip-coef must be > 0, got {self.clip_coef}")
        in_range(self, "gamma", 0.0, 1.0)
        in_range(self, "gae_lambda", 0.0, 1.0)


class ValueHead(torch.nn.Module):
    """V(state before response token t) = w . h + b, with h the policy's last hidden state at the
    position that predicts token t. (B, T, hidden) -> (B, T), in float32 whatever the model's dtype."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        # Zero start: every value is 0 and the value loss sends no gradient into the shared
        # transformer (it flows through w) until the head has learned something.
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def make_agent(cfg: Config, device: torch.device | str = "cpu"):
    """(model, tokenizer, value_head): the policy and its value head."""
    model, tokenizer = load_policy(cfg, torch.device(device))
    hidden_size = getattr(model.config, "hidden_size", None)
    if not isinstance(hidden_size, int):
        raise UserError(f"ppo_llm's value head reads the last hidden state, and {cfg.model}'s config has no hidden_size")
    return model, tokenizer, ValueHead(hidden_size).to(device)


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("ppo_llm", cfg, resume=resume, force=force, multi_process=True)
    device, world, rank = run.device, run.dist.world_size, run.dist.rank
    model, tokenizer, value_head = make_agent(cfg, device)
    task = load_task(cfg)
    reference = frozen_reference(model, cfg)
    training, start = start_training(run, cfg, model, tokenizer, task, extra={"value_head": value_head})
    optimizer, modules, held_out = training.optimizer, training.modules, training.held_out
    gen = torch.Generator(device=device)
    shuffle = torch.Generator()  # on the CPU, so the minibatch order does not depend on the device
    step = start
    for step in range(start + 1, cfg.total_steps + 1):
        t0 = time.perf_counter()
        _, rollout, rewards, reasons = sample_step(model, tokenizer, task, cfg, step, rank, cfg.num_generations, gen)
        t_rollout = time.perf_counter() - t0
        mask = rollout.response_mask
        B = mask.shape[0]

        with torch.no_grad():
            old_logprobs, old_values = _policy_values(model, value_head, rollout, range(B), cfg)
            kl = torch.zeros_like(old_logprobs)
            if reference is not None:
                ref_logprobs = rollout_logprobs(reference, rollout, cfg.micro_batch_size, cfg.temperature)
                kl = kl_penalty(old_logprobs, ref_logprobs, "k1", mask=mask)
            token_r = token_rewards(rewards.to(device), kl, mask, cfg.kl_coef)
            advantages, returns = token_gae(token_r, old_values, mask, cfg.gamma, cfg.gae_lambda)
            rollout_tokens, _ = global_counts(mask, world)
            # One token has no spread to whiten by (and the std would be nan).
            if cfg.norm_adv and rollout_tokens > 1:
                mean, std = ddp.mean_std(advantages[mask])
                advantages = masked_whiten(advantages, mask, mean=mean, std=std)

        t1 = time.perf_counter()
        stats: dict[str, float] = Counter()
        updates = cfg.update_epochs * cfg.num_minibatches
        shuffle.manual_seed(step_seed(cfg.seed, step, rank))
        for _epoch in range(cfg.update_epochs):
            for minibatch in torch.randperm(B, generator=shuffle).chunk(cfg.num_minibatches):
                # Global normaliser: the minibatch's tokens on every rank, whatever its micro-batches.
                num_tokens, _ = global_counts(mask[minibatch], world)
                optimizer.zero_grad(set_to_none=True)
                for rows in minibatch.split(cfg.micro_batch_size):
                    rows = rows.to(device)
                    m = mask[rows]
                    logp, values = _policy_values(model, value_head, rollout, rows, cfg)
                    pg, pg_stats = clipped_token_pg_loss(logp, old_logprobs[rows], advantages[rows], m,
                                                         clip_low=cfg.clip_coef, clip_high=cfg.clip_coef)
                    vl, _ = value_loss(values, returns[rows], old_values[rows], cfg.clip_coef if cfg.clip_vloss else None)
                    # The world factor undoes all_reduce_grads' average over processes.
                    pg_loss = world * masked_aggregate(pg, m, "token_mean", num_tokens=num_tokens)
                    v_loss = world * masked_aggregate(vl, m, "token_mean", num_tokens=num_tokens)
                    (pg_loss + cfg.vf_coef * v_loss).backward()
                    share = float(m.sum()) / float(num_tokens / world) / updates
                    stats["losses/policy"] += float(pg_loss.detach()) / world / updates
                    stats["losses/value"] += float(v_loss.detach()) / world / updates
                    for k in ("clipfrac", "approx_kl"):
                        stats[f"losses/{k}"] += float(pg_stats[k]) * share
                norm = training.step(world, step)
                if norm is not None:
                    stats["losses/grad_norm"] += norm / updates
        t_update = time.perf_counter() - t1

        # This process's rollout (a rank-0 view under DDP) for the value and KL diagnostics.
        sel_returns, sel_values = returns[mask], old_values[mask]
        var = sel_returns.var() if sel_returns.numel() > 1 else torch.tensor(0.0)
        metrics = {**stats, **rollout_metrics(task, rollout, rewards, reasons),
                   "losses/explained_variance": float(1 - (sel_returns - sel_values).var() / var) if var > 0 else float("nan"),
                   "llm/value_mean": float(sel_values.mean()) if sel_values.numel() else 0.0,
                   "llm/kl": float(kl.sum(-1).mean()), "llm/tokens": float(rollout_tokens),
                   "llm/samples_per_s": B / (t_rollout + t_update), "time/rollout": t_rollout, "time/update": t_update}
        run.log(step, step, metrics, [], [], sps=B / (t_rollout + t_update), progress_value=metrics["llm/reward_mean"])
        held_out.maybe(step, cfg.total_steps, f"train reward {metrics['llm/reward_mean']:.3f}")
        run.maybe_checkpoint(step, step, modules)

    return finish_training(run, training, step)


def _policy_values(model: Any, value_head: ValueHead, rollout: Any, rows: Any, cfg: Config
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, values) of the rollout's `rows` response tokens, each (len(rows), T) and 0 where
    masked, from one forward per micro-batch: the logits give the log-probs (as token_logprobs
    computes them) and the last hidden state at the same positions gives the values."""
    rows = torch.as_tensor(list(rows) if isinstance(rows, range) else rows, device=rollout.response_ids.device)
    logps, values = [], []
    for chunk in rows.split(cfg.micro_batch_size):
        response_ids, response_mask = rollout.response_ids[chunk], rollout.response_mask[chunk]
        T = response_ids.shape[1]
        ids = torch.cat([rollout.prompt_ids[chunk], response_ids], dim=1)
        mask = torch.cat([rollout.prompt_mask[chunk], response_mask], dim=1)
        out = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask),
                    use_cache=False, output_hidden_states=True, **logits_to_keep_kwargs(model, T + 1))
        logits = scale_logits(out.logits[:, -(T + 1):-1], cfg.temperature)
        logp = logits.gather(-1, response_ids[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        if getattr(out, "hidden_states", None) is None:
            raise UserError(f"ppo_llm's value head reads the last hidden state, and {cfg.model} returns none "
                            "for output_hidden_states=True")
        value = value_head(out.hidden_states[-1][:, -(T + 1):-1])
        # where, not multiply: padding can carry non-finite numbers, and nan * 0 is nan.
        logps.append(torch.where(response_mask, logp, 0.0))
        values.append(torch.where(response_mask, value, 0.0))
    return torch.cat(logps), torch.cat(values)

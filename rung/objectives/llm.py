"""Objectives for RL on language models, where the policy is a language model and the action a
generated token sequence. Pure functions: tensors in, tensors or (per-token loss, stats) out.

Conventions. Per-token tensors are (B, T) over the response tokens. `mask` (B, T), bool or 0/1
float, is 1 on the tokens the policy chose and that count, 0 on padding, after the end of
sequence and (multi-turn) on tool output inside a response. Masked positions of the inputs must
hold finite numbers (0 is fine): they are zeroed in every output, but inf * 0 is nan. Groups for
GRPO and RLOO are contiguous: B = num_prompts * G, prompt i's samples in rows i*G .. i*G+G-1, and
a group must not be split across processes.

Per-token losses come back unreduced (0 on masked tokens); `masked_aggregate` turns them into the
scalar to differentiate, with normalisers that can be the global counts so that gradient
accumulation and the number of processes do not change the gradient.

What rung's classic-RL objectives already give: `ppo_clip_loss` (clip-higher bound added for this
file), `reinforce_loss` and `value_loss` are elementwise and are used here on (B, T) tensors;
`gae` is not, see `token_gae`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from rung.objectives.policy_gradient import ppo_clip_loss, reinforce_loss

Aggregation = Literal["token_mean", "seq_mean", "constant"]
KLEstimator = Literal["k1", "k2", "k3"]


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be (num_prompts * group_size,), got {tuple(rewards.shape)} "
                         f"with group_size {group_size}")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: Literal["std", "none"] = "std",
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO's outcome advantage (Shao et al. 2024, DeepSeekMath): each sample's reward minus its
    group's mean, divided by the group's std (scale="std"), or not divided (scale="none", Dr. GRPO,
    Liu et al. 2025, which argues the division up-weights prompts that are nearly always solved or
    nearly never). rewards (B,) -> (B,), B = num_prompts * group_size.

    The std is Bessel-corrected (unbiased=True), as in TRL's and verl's GRPO, so that for the same
    rewards rung gives the peers' advantages and benchmarks compare like with like; it needs
    group_size >= 2. A group whose rewards are all equal carries no signal and gives exactly 0:
    float32 rounding can leave its deviations at ~1e-8 with a std of the same size, and
    (r - mean) / (std + eps) would turn that noise into advantages of a few hundredths."""
    g = _grouped(rewards, group_size)
    if scale == "std" and group_size < 2:
        raise ValueError("group_size must be at least 2 to divide by the group's std")
    adv = g - g.mean(dim=1, keepdim=True)
    if scale == "std":
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; use std or none")
    equal = g.amax(dim=1, keepdim=True) == g.amin(dim=1, keepdim=True)
    return adv.masked_fill(equal, 0.0).view(-1)


def process_advantages(step_rewards: torch.Tensor, step_ends: torch.Tensor, step_mask: torch.Tensor, group_size: int,
                       num_tokens: int, *, scale: Literal["std", "none"] = "std", eps: float = 1e-6) -> torch.Tensor:
    """GRPO with process supervision (Shao et al. 2024, DeepSeekMath sec. 4.1.3): a reward per
    reasoning step instead of one per response. Each step's reward is normalised by the mean (and,
    with scale="std", the Bessel-corrected std) of all step rewards in its group, every step of
    every response to the same prompt; a token's advantage is the sum of the normalised rewards of
    the steps that end at or after it, its own step and all later ones. So a wrong line is charged
    to its own tokens and those before it, never to the lines after it.

    step_rewards, step_ends (index of each step's last token in the response), step_mask (B, S),
    padded steps masked out; returns (B, num_tokens). Tokens after a response's last step get 0,
    and so does every token of a group whose step rewards are all equal (no signal, as in
    `group_advantages`)."""
    if step_rewards.dim() != 2 or step_rewards.shape != step_ends.shape or step_rewards.shape != step_mask.shape:
        raise ValueError(f"step_rewards, step_ends and step_mask must be (B, S) alike, got {tuple(step_rewards.shape)}, "
                         f"{tuple(step_ends.shape)}, {tuple(step_mask.shape)}")
    B, S = step_rewards.shape
    if group_size < 1 or B % group_size:
        raise ValueError(f"{B} responses do not split into groups of {group_size}")
    mask = step_mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=step_rewards.device)
    r = torch.where(mask, step_rewards.float(), zero)
    g, gm = r.reshape(-1, group_size * S), mask.reshape(-1, group_size * S)
    n = gm.sum(1, keepdim=True)
    dev = torch.where(gm, g - g.sum(1, keepdim=True) / n.clamp_min(1), zero)
    if scale == "std":
        std = (dev.pow(2).sum(1, keepdim=True) / (n - 1).clamp_min(1)).sqrt()
        dev = dev / (std + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; use std or none")
    big = torch.finfo(torch.float32).max
    equal = torch.where(gm, g, -big).amax(1, keepdim=True) <= torch.where(gm, g, big).amin(1, keepdim=True)
    normalised = dev.masked_fill(equal, 0.0).view(B, S)
    covers = step_ends.unsqueeze(-1) >= torch.arange(num_tokens, device=step_ends.device)  # (B, S, T)
    return (normalised.unsqueeze(-1) * covers).sum(1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each sample's reward minus the mean reward
    of the other G - 1 samples of its prompt, a baseline that does not depend on the sample itself
    and so adds no bias. Equals G / (G - 1) times the group-mean deviation. (B,) -> (B,).

    (REINFORCE with any other baseline is `rewards - baseline`, which needs no function.)"""
    if group_size < 2:
        raise ValueError("group_size must be at least 2 for a leave-one-out baseline")
    g = _grouped(rewards, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).view(-1)


def masked_aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: Aggregation = "token_mean", *,
                     num_tokens: float | torch.Tensor | None = None,
                     num_sequences: float | torch.Tensor | None = None,
                     max_tokens: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) over the masked tokens to a scalar.

    - "token_mean": sum over the batch's tokens / num_tokens. Every token weighs the same, so a
      long response counts in proportion to its length. DAPO (Yu et al. 2025) argues for this in
      GRPO, and it is rung's default there: under "seq_mean" each token of a long response weighs
      less, so long wrong patterns (repetition, gibberish) are under-penalised and long good
      reasoning under-rewarded.
    - "seq_mean": mean over each sequence's tokens, then sum over sequences / num_sequences. The
      original GRPO (DeepSeekMath eq. 3); a sequence with no tokens still counts as one.
    - "constant": sum / (num_sequences * max_tokens), Dr. GRPO (Liu et al. 2025): a normaliser
      that depends on neither the response lengths nor the batch, removing the length bias that
      both means carry. max_tokens is the generation budget (max_new_tokens), not this tensor's
      padded T, which changes from batch to batch.

    The counts default to this tensor's (mask.sum() tokens, B sequences). When a batch is split
    into gradient-accumulation micro-batches, pass the whole batch's counts (over all processes):
    the micro-batch losses then sum to the whole batch's loss, so their gradients sum to its
    gradient. With local counts they do not (a micro-batch of short answers would weigh as much
    as one of long ones). DDP averages gradients over its W processes, so under DDP multiply the
    loss by W (or pass the global counts divided by W).
    """
    mask = mask.bool()
    total = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if mode == "token_mean":
        # clamp: a micro-batch with no tokens gives 0, not 0/0.
        n = mask.sum().clamp_min(1) if num_tokens is None else num_tokens
        return total.sum() / n
    n_seq = mask.shape[0] if num_sequences is None else num_sequences
    if mode == "seq_mean":
        per_seq = total.sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)
        return per_seq.sum() / n_seq
    if mode == "constant":
        if max_tokens is None:
            raise ValueError("mode 'constant' needs max_tokens, the generation budget (max_new_tokens)")
        return total.sum() / (n_seq * max_tokens)
    raise ValueError(f"unknown mode {mode!r}; use token_mean, seq_mean or constant")


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sequence advantages (B,) broadcast over the tokens; per-token (B, T) pass through."""
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _zero_masked(x, mask).sum() / mask.sum().clamp_min(1)


def clipped_token_pg_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                          mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.2
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate per token (Schulman et al. 2017), the policy loss of GRPO and
    PPO-RLHF, with the ratio pi/pi_old clipped to [1 - clip_low, 1 + clip_high]; clip_high > clip_low
    is DAPO's clip-higher (Yu et al. 2025, 0.2 / 0.28). logprobs, old_logprobs, mask (B, T) of the
    chosen tokens; advantages (B,) per sequence (GRPO, RLOO) or (B, T) per token (PPO). Returns the
    per-token loss (B, T), 0 on masked tokens, and masked-mean stats (detached): clipfrac (ratio
    outside the range), clipfrac_low / clipfrac_high (below / above it), approx_kl (k3 estimate of
    KL(old || new)) and ratio_mean.

    The loss itself is `ppo_clip_loss` elementwise. Its stats are means over every element, padding
    included, so they are computed again here over the masked tokens. The log-ratio is zeroed on
    masked tokens before the exponential: padding log-probabilities far apart would overflow it."""
    mask = mask.bool()
    lp, old = _zero_masked(logprobs, mask), _zero_masked(old_logprobs, mask)
    loss, _ = ppo_clip_loss(lp, old, _per_token(advantages, lp), clip_low, clip_high)
    with torch.no_grad():
        log_ratio = lp - old
        d = log_ratio.exp() - 1
        stats = {
            "clipfrac_low": _masked_mean((-d > clip_low).float(), mask),
            "clipfrac_high": _masked_mean((d > clip_high).float(), mask),
            "approx_kl": _masked_mean(d - log_ratio, mask),
            "ratio_mean": _masked_mean(d + 1, mask),
        }
        stats["clipfrac"] = stats["clipfrac_low"] + stats["clipfrac_high"]
    return _zero_masked(loss, mask), stats


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLEstimator = "k3",
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman 2020, "Approximating
    KL divergence"), with log r = ref_logprobs - logprobs. (B, T) in and out, 0 on masked tokens
    when a mask is given.

    - k1 = -log r: unbiased, one sign per token, high variance. PPO-RLHF (Ziegler et al. 2019,
      Ouyang et al. 2022) subtracts kl_coef * k1 from each token's reward (`token_rewards`),
      computed without gradient.
    - k2 = (log r)^2 / 2: biased, low variance, >= 0.
    - k3 = (r - 1) - log r: unbiased and >= 0. GRPO (DeepSeekMath eq. 4) adds beta * k3 to the loss.

    As loss terms differentiated through the sampled tokens their gradients differ from their
    values: in expectation over pi, k1's gradient is 0, k2's is the gradient of KL(pi || ref), and
    k3's is the gradient of the other direction, KL(ref || pi) (see the test). GRPO's k3 term
    therefore pulls towards the reference like a forward KL while reporting a reverse one."""
    log_r = ref_logprobs - logprobs
    if mask is not None:
        log_r = _zero_masked(log_r, mask)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r.pow(2)
    if kind == "k3":
        return log_r.exp() - 1 - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def _last_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each row's last masked token (B,), and whether the row has any (B,)."""
    mask = mask.bool()
    T = mask.shape[-1]
    last = T - 1 - mask.flip(-1).int().argmax(dim=-1)
    return last, mask.any(dim=-1)


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """PPO-RLHF's per-token reward (Ziegler et al. 2019; Ouyang et al. 2022): -kl_coef * kl on
    every response token, plus the sequence's score (reward model or verifier) on its last
    response token. score (B,), kl (B, T) (usually `kl_penalty(..., "k1")`), mask (B, T) -> (B, T),
    0 on masked tokens; a row with no response tokens gets nothing."""
    rewards = _zero_masked(-kl_coef * kl, mask)
    last, has_any = _last_index(mask)
    bonus = torch.where(has_any, score.to(rewards.dtype), torch.zeros((), dtype=rewards.dtype, device=rewards.device))
    return rewards.scatter_add(-1, last.unsqueeze(-1), bonus.unsqueeze(-1))


def token_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens, right to left.
    rewards, values, mask (B, T) -> (advantages, returns), each (B, T) and 0 on masked tokens, with
    returns = advantages + values on the others. The episode ends at each row's last masked token:
    nothing is bootstrapped after it (a response that hit max_new_tokens is treated as finished,
    as in InstructGPT, TRL and verl).

    Masked tokens inside a response (tool output in a multi-turn episode) are stepped over: the
    value and advantage carried past them come from the next token the policy chose, and they do
    not count as a step of the discount. That is why this is not `gae`: its (T, N) recursion with
    terminated/truncated flags has no way to skip a step. On a response whose mask is one
    contiguous run the two agree (tested)."""
    mask = mask.bool()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    carry = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        m = mask[:, t]
        a = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * carry
        advantages[:, t] = torch.where(m, a, 0.0)
        next_value = torch.where(m, values[:, t], next_value)
        carry = torch.where(m, a, carry)
    return advantages, _zero_masked(advantages + values, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, *, mean: torch.Tensor | float | None = None,
                  std: torch.Tensor | float | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Standardise x (B, T) with the mean and Bessel-corrected std of its masked entries only;
    (B, T) out, 0 on masked tokens. Under DDP pass the global statistics,
    `*rung.distributed.ddp.mean_std(x[mask.bool()])`, so that sharding does not change them."""
    mask = mask.bool()
    if mean is None or std is None:
        sel = x[mask]
        mean = sel.mean() if mean is None else mean
        std = sel.std() if std is None else std
    return _zero_masked((x - mean) / (std + eps), mask)


def reinforce_token_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE with a baseline (Williams 1992) on sequences: -A * log pi(token) on every response
    token, whose sum over a sequence is -A * log pi(sequence). logprobs, mask (B, T); advantages
    (B,) (e.g. `rloo_advantages`) or (B, T). Per-token loss (B, T), 0 on masked tokens."""
    loss, _ = reinforce_loss(logprobs, _per_token(advantages, logprobs))
    return _zero_masked(loss, mask), {}


def sft_loss(logits_or_logprobs: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token cross-entropy -log p(target) over the response tokens only, the prompt masked out
    (supervised fine-tuning, as in InstructGPT's SFT stage). logits (B, T, V), where position t
    predicts target_ids[:, t] (shift by one before calling: logits[:, :-1] predict ids[:, 1:]);
    target_ids, mask (B, T). log_softmax is idempotent, so logits and log-probabilities give the
    same loss. Per-token loss (B, T), 0 on masked tokens; stats: masked token accuracy."""
    mask = mask.bool()
    # Masked targets may be an ignore index such as -100, which cross_entropy cannot gather.
    targets = torch.where(mask, target_ids, torch.zeros_like(target_ids)).long()
    loss = F.cross_entropy(logits_or_logprobs.flatten(0, -2), targets.flatten(), reduction="none")
    loss = _zero_masked(loss.view_as(targets), mask)
    with torch.no_grad():
        accuracy = _masked_mean((logits_or_logprobs.argmax(-1) == targets).float(), mask)
    return loss, {"accuracy": accuracy}

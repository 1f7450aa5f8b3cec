"""Log-probabilities of response tokens under a causal language model, for RL losses.

One forward over prompt + response, then log p(token) = logit[token] - logsumexp(logits), in
float32, so the (B, L, vocab) log-softmax is never materialised. Temperature divides the logits
first, as `rung.llm.generation` does when it records log-probs, so that the ratio of new to old
log-probs is exactly 1 before the first update; temperature 0 (greedy) means 1 here, as there.

Responses to the same prompt (GRPO's groups: consecutive rows with identical prompts) share
the prompt's forward: `prefill_shared` runs the prompt once per group and hands every row a copy
of its key/value cache, so a group of G costs one prompt forward, not G, in sampling and in the
update. The gradient is the same (the shared activations collect the gradient of every row that
reads them); the log-probs agree with the unshared forward to float32 rounding.

Simplified: the forward runs over the full padded length (no packing, no removal of padding
columns); only the last T+1 positions' logits are computed where the model takes `logits_to_keep`.
Prompt sharing needs a Hugging Face model (its cache can be re-indexed by row); other models
(rung's small-gru) run every row's prompt.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from rung.errors import UserError


def scale_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the temperature, in float32; temperature 0 (greedy) leaves them unscaled."""
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float()
    return logits if temperature in (0.0, 1.0) else logits / temperature


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions that count only real tokens, so a left-padded row sees 0, 1, 2... from its
    first real token, as it would alone; padding positions get 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_parameters(model: Any) -> set[str]:
    """Names of the keyword arguments the model's forward takes (looking through a peft wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def logits_to_keep_kwargs(model: Any, n: int) -> dict[str, int]:
    """`{"logits_to_keep": n}` where the model's forward takes it (so only the last n positions'
    logits are computed), else `{}`."""
    return {"logits_to_keep": n} if "logits_to_keep" in forward_parameters(model) else {}


def cache_argument(model: Any) -> str:
    """The name the model's forward gives its KV cache: `cache` from transformers 5 on, else
    `past_key_values`."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def _shares_prompts(model: Any) -> bool:
    from transformers import PreTrainedModel

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return isinstance(base, PreTrainedModel)


def prefill_shared(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Any | None:
    """The KV cache of every row's prompt but its last column, computed once per run of
    consecutive identical prompts and re-indexed to all B rows; None where nothing is shared (no
    two neighbouring rows alike, a one-column prompt, a model whose cache cannot be re-indexed).
    The caller then feeds the last prompt column itself, so every row gets its own first logits."""
    B, P = prompt_ids.shape
    if B < 2 or P < 2 or not _shares_prompts(model):
        return None
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    if not bool(same.any()):
        return None
    starts = torch.cat([same.new_ones(1), ~same])
    firsts = starts.nonzero().flatten()
    ids, mask = prompt_ids[firsts, :-1], prompt_mask[firsts, :-1]
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask), use_cache=True,
                **logits_to_keep_kwargs(model, 1))
    cache = out[cache_argument(model)]
    if not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(starts.long().cumsum(0) - 1)
    return cache


def _response_logits(model: Any, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """(B, T, V) logits predicting each response token: positions P-1 .. P+T-2 of the sequence."""
    if prompt_ids.shape[0] != response_ids.shape[0]:
        raise UserError(f"prompt batch {prompt_ids.shape[0]} != response batch {response_ids.shape[0]}")
    T = response_ids.shape[1]
    cache = prefill_shared(model, prompt_ids, prompt_mask)
    if cache is not None:
        # The input is the last prompt column and every response token but the last: exactly the
        # T positions whose logits predict the response.
        ids = torch.cat([prompt_ids[:, -1:], response_ids[:, :-1]], dim=1)
        mask = torch.cat([prompt_mask.bool(), response_mask[:, :-1].bool()], dim=1)
        positions = prompt_mask.long().sum(-1, keepdim=True) - 1 + torch.arange(T, device=ids.device)
        out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=True,
                    **{cache_argument(model): cache})
        return out.logits
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    # Padding after the response is masked too; it comes after every real token, so no real
    # token's position or attention changes.
    mask = torch.cat([prompt_mask.bool(), response_mask.bool()], dim=1)
    keep = logits_to_keep_kwargs(model, T + 1)
    positions = position_ids_from_mask(mask)
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=False, **keep)
    return out.logits[:, -(T + 1) : -1]


def token_logprobs(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, T) float32 log-probs of `response_ids` (B, T) after left-padded `prompt_ids` (B, P).

    Masks are (B, P) and (B, T), True on real tokens. Entries where `response_mask` is False are 0.
    `chunk_size` bounds how many rows of the float32 log-softmax are computed at once. With
    `return_entropy`, also the (B, T) entropy of the temperature-scaled distribution (0 where
    masked). Gradients flow unless called under `torch.no_grad()`.

    Columns after the batch's longest response are not run through the model (a micro-batch of
    short responses costs what its own tokens cost, not what the rollout's longest one does).
    """
    T = response_ids.shape[1]
    used = response_mask.bool().any(0).nonzero()
    last = int(used.max()) + 1 if used.numel() else 1
    if last < T:
        out = token_logprobs(model, prompt_ids, prompt_mask, response_ids[:, :last], response_mask[:, :last],
                             temperature=temperature, chunk_size=chunk_size, return_entropy=return_entropy)
        pieces = out if return_entropy else (out,)
        padded = tuple(F.pad(x, (0, T - last)) for x in pieces)
        return padded if return_entropy else padded[0]
    logits = _response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    B = logits.shape[0]
    step = chunk_size or B
    if step < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
    logps, ents = [], []
    for i in range(0, B, step):
        scaled = scale_logits(logits[i : i + step], temperature)
        lse = torch.logsumexp(scaled, dim=-1)
        logps.append(scaled.gather(-1, response_ids[i : i + step, :, None]).squeeze(-1) - lse)
        if return_entropy:
            # H = logsumexp(z) - sum softmax(z) z
            ents.append(lse - (F.softmax(scaled, dim=-1) * scaled).sum(-1))
    mask = response_mask.bool()
    # where, not multiply: a fully padded row can carry NaN logits, and NaN * 0 is NaN.
    logp = torch.where(mask, torch.cat(logps), 0.0)
    if not return_entropy:
        return logp
    return logp, torch.where(mask, torch.cat(ents), 0.0)


def sequence_logprob(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """(B,) log-probability of each whole response: the sum of its unmasked token log-probs."""
    return token_logprobs(
        model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=temperature, chunk_size=chunk_size
    ).sum(-1)

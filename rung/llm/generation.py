"""Batched sampling from a causal language model: the rollout of an LLM policy.

Our own loop over the model's forward with a KV cache (no `model.generate`): left-padded prompts,
temperature, top-k, top-p, greedy at temperature 0, stop at eos or at stop strings, seeded through
a `torch.Generator`.

Recorded log-probs are those of the sampled token under log_softmax(logits / temperature), before
top-k/top-p truncation (at temperature 0, under log_softmax(logits)). That is what
`rung.llm.logprobs.token_logprobs(..., temperature=same)` recomputes, so the importance ratio is 1
before the first update. The truncation is then a small, unrecorded mismatch between the sampling
and the scored distribution, as in TRL and vLLM's defaults.

Stop strings are searched in the decoded text of each response. The token that completes a stop
string is the last one kept in the response mask (with its log-prob); the text keeps the stop
string and drops whatever that token decoded to after it. An eos token ends a response too: it is
kept in the mask and dropped from the text.

Responses to the same prompt share its forward (`rung.llm.logprobs.prefill_shared`): a group of G
samples costs one prompt prefill.

Simplified: the batch never shrinks (finished rows keep being fed a pad token until all are done),
stop strings are searched in the last few tokens' text only, and there is no repetition penalty,
beam search or speculative decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from rung.errors import UserError
from rung.llm.logprobs import (
    cache_argument,
    logits_to_keep_kwargs,
    position_ids_from_mask,
    prefill_shared,
    scale_logits,
)


@dataclass
class Rollout:
    """B sampled responses to B prompts."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded with the pad id
    prompt_mask: torch.Tensor  # (B, P) bool, True on prompt tokens
    response_ids: torch.Tensor  # (B, T) long, right-padded with the pad id
    response_mask: torch.Tensor  # (B, T) bool, True on generated tokens up to and including eos/stop
    logprobs: torch.Tensor  # (B, T) float32, log-prob of each sampled token (see module docstring); 0 where masked
    truncated: torch.Tensor  # (B,) bool, cut by max_new_tokens before an eos or stop string
    texts: list[str]  # decoded responses, eos dropped, cut after a stop string
    num_new_tokens: int  # generated tokens in the whole batch, response_mask.sum()


def padding_id(tokenizer: Any) -> int:
    """The id that pads prompts and responses: the tokenizer's pad token, else its eos."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise UserError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad_id


def select_rows(rollout: Rollout, rows: torch.Tensor) -> Rollout:
    """The rollout of the responses at `rows` (1-D long indices), in that order."""
    picked = rows.tolist()
    return Rollout(prompt_ids=rollout.prompt_ids[rows], prompt_mask=rollout.prompt_mask[rows],
                   response_ids=rollout.response_ids[rows], response_mask=rollout.response_mask[rows],
                   logprobs=rollout.logprobs[rows], truncated=rollout.truncated[rows],
                   texts=[rollout.texts[i] for i in picked], num_new_tokens=int(rollout.response_mask[rows].sum()))


def concat_rollouts(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout of all the rows of `rollouts`, in order. Prompts of different widths are
    left-padded and responses right-padded to the widest, with `pad_id` under a False mask, as
    generation pads them, so the rows' log-probs do not change."""
    P = max(r.prompt_ids.shape[1] for r in rollouts)
    T = max(r.response_ids.shape[1] for r in rollouts)

    def widen(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
        extra = width - x.shape[1]
        return torch.nn.functional.pad(x, (extra, 0) if left else (0, extra), value=value)

    return Rollout(prompt_ids=torch.cat([widen(r.prompt_ids, P, pad_id, True) for r in rollouts]),
                   prompt_mask=torch.cat([widen(r.prompt_mask, P, False, True) for r in rollouts]),
                   response_ids=torch.cat([widen(r.response_ids, T, pad_id, False) for r in rollouts]),
                   response_mask=torch.cat([widen(r.response_mask, T, False, False) for r in rollouts]),
                   logprobs=torch.cat([widen(r.logprobs, T, 0.0, False) for r in rollouts]),
                   truncated=torch.cat([r.truncated for r in rollouts]),
                   texts=[t for r in rollouts for t in r.texts],
                   num_new_tokens=sum(r.num_new_tokens for r in rollouts))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from (B, V) logits; return ((B,) token ids, (B,) float32 log-probs).

    Temperature scales first, then top-k (0: off) keeps the k largest logits, then top-p keeps the
    smallest set of tokens whose probability sums to at least top_p. Temperature 0 is greedy.
    The log-prob is taken before truncation (see module docstring).
    """
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 turns it off), got {top_k}")
    scaled = scale_logits(logits, temperature)
    logp_all = torch.log_softmax(scaled, dim=-1)
    if temperature == 0:
        tokens = scaled.argmax(-1)
    else:
        filtered = scaled
        if 0 < top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
            filtered = filtered.masked_fill(filtered < kth, float("-inf"))
        if top_p < 1.0:
            probs, order = torch.softmax(filtered, dim=-1).sort(dim=-1, descending=True)
            # Drop a token when the tokens ranked above it already reach top_p; the top one stays.
            drop_sorted = probs.cumsum(-1) - probs >= top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            filtered = filtered.masked_fill(drop, float("-inf"))
        tokens = _draw(torch.softmax(filtered, dim=-1), generator)
    return tokens, logp_all.gather(-1, tokens[:, None]).squeeze(-1)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of (B, V) probabilities, by inverting the cumulative distribution at a
    uniform draw. It is the same distribution as torch.multinomial and, over a 49k-token
    vocabulary, about ten times cheaper (multinomial draws an exponential for every entry). The
    sum runs in float64 so that tokens of probability ~1e-8 keep their share."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    # right=True: the first index whose cdf exceeds u, so a zero-probability token is never drawn.
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return index.clamp_(max=probs.shape[-1] - 1)


def _encode_prompts(tokenizer: Any, prompts: list[str] | list[list[int]], pad_id: int, device) -> tuple:
    """(B, P) left-padded ids and bool mask. Text is tokenized as given, no special tokens added."""
    if not prompts:
        raise UserError("generate needs at least one prompt")
    if all(isinstance(p, str) for p in prompts):
        seqs = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    elif all(isinstance(p, (list, tuple)) for p in prompts):
        seqs = [list(p) for p in prompts]
    else:
        raise UserError("prompts must be all strings or all lists of token ids")
    for i, s in enumerate(seqs):
        if not s:
            raise UserError(f"prompt {i} is empty: a language model needs at least one token to continue")
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, P - len(s) :] = True
    return ids.to(device), mask.to(device)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return {i for i in ids if i is not None}


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return (text[: min(ends)], True) if ends else (text, False)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str] | list[list[int]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: list[str] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Rollout:
    """Sample a response to each prompt (strings, or lists of token ids), B = len(prompts).

    Randomness comes from `generator`, else from a fresh one seeded with `seed`, else from torch's
    global RNG. Stops as soon as every response has ended (eos, stop string) or after
    `max_new_tokens` steps. Runs under `torch.inference_mode`; the model's train/eval mode is left
    as it is (models from `load_model` have dropout off, so it does not matter for them).
    """
    with torch.inference_mode():
        args = (max_new_tokens, temperature, top_p, top_k, stop, generator, seed)
        rollout = _generate(model, tokenizer, prompts, *args)
    # Inference tensors cannot be saved for backward, and the ids feed the training forward.
    tensors = [f.name for f in fields(rollout) if isinstance(getattr(rollout, f.name), torch.Tensor)]
    return replace(rollout, **{name: getattr(rollout, name).clone() for name in tensors})


def _generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, top_k, stop, generator, seed) -> Rollout:
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stop = [s for s in (stop or []) if s]
    pad_id = padding_id(tokenizer)
    device = model.device
    prompt_ids, prompt_mask = _encode_prompts(tokenizer, prompts, pad_id, device)
    B, P = prompt_ids.shape
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and P + max_new_tokens > limit:
        raise UserError(f"prompt length {P} + max_new_tokens {max_new_tokens} exceeds the model's {limit} positions")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos = torch.tensor(sorted(_eos_ids(model, tokenizer)), dtype=torch.long, device=device)
    # Decoding the last few tokens is enough to see a stop string that the newest token completed.
    window = 4 * max((len(s) for s in stop), default=0) + 4

    cache_arg = cache_argument(model)
    attn = prompt_mask.long()
    pos = attn.sum(-1, keepdim=True) - 1  # (B, 1) position of each row's last prompt token
    shared = prefill_shared(model, prompt_ids, prompt_mask)  # one prompt forward per group of repeats
    if shared is not None:
        out = model(input_ids=prompt_ids[:, -1:], attention_mask=attn, position_ids=pos, use_cache=True,
                    **{cache_arg: shared})
    else:
        out = model(
            input_ids=prompt_ids, attention_mask=attn, position_ids=position_ids_from_mask(prompt_mask),
            use_cache=True, **logits_to_keep_kwargs(model, 1),
        )  # fmt: skip
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stopped = [False] * B
    tokens_out, logps_out, masks_out = [], [], []
    for t in range(max_new_tokens):
        tokens, logp = sample_next(out.logits[:, -1], temperature, top_p, top_k, generator)
        tokens = tokens.masked_fill(done, pad_id)
        tokens_out.append(tokens)
        logps_out.append(logp.masked_fill(done, 0.0))
        masks_out.append(~done)
        done = done | torch.isin(tokens, eos)
        if stop:
            seq = torch.stack(tokens_out[-window:], dim=1).tolist()
            for i in (~done).nonzero().flatten().tolist():
                if _cut_at_stop(tokenizer.decode(seq[i]), stop)[1]:
                    stopped[i] = True
                    done[i] = True
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos + 1
        out = model(
            input_ids=tokens[:, None], attention_mask=attn, position_ids=pos,
            use_cache=True, **{cache_arg: out[cache_arg]},
        )  # fmt: skip

    response_ids = torch.stack(tokens_out, dim=1)
    response_mask = torch.stack(masks_out, dim=1)
    texts = []
    for i in range(B):
        text = tokenizer.decode(response_ids[i][response_mask[i]].tolist(), skip_special_tokens=True)
        texts.append(_cut_at_stop(text, stop)[0] if stopped[i] else text)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=torch.stack(logps_out, dim=1).float(),
        truncated=~done,
        texts=texts,
        num_new_tokens=int(response_mask.sum()),
    )


def generate_grouped(
    model: Any, tokenizer: Any, prompts: list[str] | list[list[int]], num_generations: int, **kwargs: Any
) -> Rollout:
    """`generate` with each prompt repeated `num_generations` (G) times, group-major: rows
    i*G .. i*G+G-1 are prompt i's samples. Keyword arguments go to `generate`."""
    if num_generations < 1:
        raise UserError(f"num_generations must be >= 1, got {num_generations}")
    return generate(model, tokenizer, [p for p in prompts for _ in range(num_generations)], **kwargs)

"""Sampling and log-probs of LLM policies on tiny-gpt: the ratio-is-1 property, padding, stops."""

import math

import pytest
import torch

pytest.importorskip("transformers")

from rung.errors import UserError  # noqa: E402
from rung.llm.generation import concat_rollouts, generate, generate_grouped, padding_id, sample_next, select_rows  # noqa: E402
from rung.llm.logprobs import sequence_logprob, token_logprobs  # noqa: E402
from rung.llm.models import load_model  # noqa: E402

PROMPTS = ["What is 3 + 4?", "1 * 2", "the answer is not what"]  # different lengths: left padding


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt")


def _logprobs(model, r, **kw):
    return token_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, **kw)


def test_sample_next_greedy_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    tokens, logp = sample_next(logits, temperature=0.0)
    assert tokens.eq(0).all() and torch.allclose(logp, torch.tensor(math.log(0.5)))
    # Nucleus 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it, so tokens 0 and 1 only.
    tokens, logp = sample_next(logits, temperature=1.0, top_p=0.7, generator=g)
    assert set(tokens.tolist()) == {0, 1}
    assert abs(tokens.eq(0).float().mean().item() - 0.5 / 0.8) < 0.05  # renormalised over the nucleus
    # The recorded log-prob is under the untruncated distribution.
    assert torch.allclose(logp, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1))
    tokens, _ = sample_next(logits, temperature=1.0, top_p=0.85, generator=g)
    assert set(tokens.tolist()) == {0, 1, 2}
    tokens, _ = sample_next(logits, temperature=1.0, top_k=1, generator=g)
    assert tokens.eq(0).all()
    tokens, _ = sample_next(logits, temperature=1.0, top_k=3, top_p=0.6, generator=g)
    assert set(tokens.tolist()) == {0, 1}  # top-k first, then top-p of the renormalised rest
    # Temperature scales before the log-prob is taken.
    tokens, logp = sample_next(logits[:5], temperature=2.0, generator=g)
    assert torch.allclose(logp, (logits[:5] / 2).log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1))
    with pytest.raises(UserError, match="top_p"):
        sample_next(logits, top_p=0.0)


def test_generated_logprobs_match_token_logprobs(tiny):
    model, tok = tiny
    for temperature in (1.0, 0.7, 0.0):
        r = generate(model, tok, PROMPTS, max_new_tokens=12, temperature=temperature, top_p=0.9, seed=1)
        assert r.prompt_mask.sum(1).unique().numel() == 3  # the prompts really are padded differently
        recomputed = _logprobs(model, r, temperature=temperature)
        assert recomputed.dtype == torch.float32
        assert torch.allclose(recomputed, r.logprobs, atol=1e-4), temperature
        assert recomputed[~r.response_mask].eq(0).all()


def test_padded_batch_equals_each_sequence_alone(tiny):
    model, tok = tiny
    r = generate(model, tok, PROMPTS, max_new_tokens=8, seed=3)
    batched, entropy = _logprobs(model, r, return_entropy=True)
    chunked = _logprobs(model, r, chunk_size=1)
    assert torch.allclose(batched, chunked)
    for i, prompt in enumerate(PROMPTS):
        p = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n = int(r.response_mask[i].sum())
        resp = r.response_ids[i : i + 1, :n]
        ones = torch.ones_like(p, dtype=torch.bool), torch.ones_like(resp, dtype=torch.bool)
        alone = token_logprobs(model, p, ones[0], resp, ones[1])
        assert torch.allclose(alone, batched[i : i + 1, :n], atol=1e-5)
        # The same numbers from the plain full-sequence forward, no masks or positions involved.
        full = model(input_ids=torch.cat([p, resp], 1)).logits[0, p.shape[1] - 1 : -1].log_softmax(-1)
        assert torch.allclose(full.gather(-1, resp[0, :, None]).squeeze(-1), alone[0], atol=1e-5)
    assert (entropy[r.response_mask] > 0).all() and entropy[~r.response_mask].eq(0).all()
    seq = sequence_logprob(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    assert torch.allclose(seq, batched.sum(1))


def test_masks_end_at_eos_and_exclude_padding(tiny):
    model, tok = tiny
    eos = tok.eos_token_id
    # Raise eos's logit so that some responses end early and others run to max_new_tokens.
    bias = torch.zeros(len(tok))
    bias[eos] = 3.0
    handle = model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    try:
        r = generate(model, tok, PROMPTS * 4, max_new_tokens=30, seed=0)
    finally:
        handle.remove()
    lengths = r.response_mask.sum(1)
    assert r.truncated.any() and (~r.truncated).any()
    assert r.response_ids.shape[1] == int(lengths.max())  # stopped once every row was done
    assert r.num_new_tokens == int(lengths.sum())
    for i in range(len(r.texts)):
        n = int(lengths[i])
        assert r.response_mask[i, :n].all() and not r.response_mask[i, n:].any()  # a prefix
        assert (r.response_ids[i, n:] == tok.pad_token_id).all() and r.logprobs[i, n:].eq(0).all()
        assert (eos in r.response_ids[i, :n].tolist()) == (not r.truncated[i])
        if not r.truncated[i]:
            assert r.response_ids[i, n - 1] == eos and eos not in r.response_ids[i, : n - 1].tolist()
            assert tok.eos_token not in r.texts[i]
    # The prompt mask is False exactly on the left padding.
    assert torch.equal(r.prompt_mask.sum(1)[:3], torch.tensor([len(tok(p)["input_ids"]) for p in PROMPTS]))
    assert (r.prompt_ids[~r.prompt_mask] == tok.pad_token_id).all()


def test_stop_strings(tiny):
    model, tok = tiny
    free = generate(model, tok, PROMPTS, max_new_tokens=20, seed=5)
    # A stop string that the unconstrained sample hits in the middle: the 4th-6th characters of row 0.
    stop = free.texts[0][3:6]
    assert len(stop) == 3
    r = generate(model, tok, PROMPTS, max_new_tokens=20, seed=5, stop=[stop])
    assert r.texts[0].endswith(stop) and free.texts[0].startswith(r.texts[0])
    assert r.texts[0].count(stop) == 1 and not r.truncated[0]
    n = int(r.response_mask[0].sum())
    assert n < 20 and torch.equal(r.response_ids[0, :n], free.response_ids[0, :n])  # same draws up to the stop
    assert stop in tok.decode(r.response_ids[0, :n]) and stop not in tok.decode(r.response_ids[0, : n - 1])
    assert not r.response_mask[0, n:].any()


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(tiny):
    model, tok = tiny
    a = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=0.0)
    torch.manual_seed(123)  # greedy does not read any RNG
    b = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=0.0)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    c = generate(model, tok, PROMPTS, max_new_tokens=10, seed=7)
    d = generate(model, tok, PROMPTS, max_new_tokens=10, generator=torch.Generator().manual_seed(7))
    e = generate(model, tok, PROMPTS, max_new_tokens=10, seed=8)
    assert torch.equal(c.response_ids, d.response_ids) and torch.equal(c.logprobs, d.logprobs)
    assert not torch.equal(c.response_ids, e.response_ids)


def test_generate_grouped_is_group_major(tiny):
    model, tok = tiny
    r = generate_grouped(model, tok, PROMPTS[:2], num_generations=3, max_new_tokens=6, seed=0)
    assert r.response_ids.shape[0] == 6
    assert all(torch.equal(r.prompt_ids[i], r.prompt_ids[0]) for i in range(3))
    assert all(torch.equal(r.prompt_ids[i], r.prompt_ids[3]) for i in range(3, 6))
    assert not torch.equal(r.prompt_ids[0], r.prompt_ids[3])
    assert len({tuple(x) for x in r.response_ids[:3].tolist()}) > 1  # samples differ within a group


def test_grouped_prompts_share_one_forward_with_the_same_logprobs_and_gradient(tiny, monkeypatch):
    from rung.llm import logprobs as lp

    model, tok = tiny
    # Groups of different sizes, one prompt alone, one of a single token (nothing to prefill).
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] + [PROMPTS[2]] * 2 + ["7"] * 2
    r = generate(model, tok, prompts, max_new_tokens=9, temperature=1.0, seed=4)
    calls = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, **kw: calls.append(kw["input_ids"].shape) or forward(self, **kw))
    shared = _logprobs(model, r)
    assert calls[0] == (4, r.prompt_ids.shape[1] - 1)  # one prompt forward per group, its last column left out
    assert torch.allclose(shared, r.logprobs, atol=1e-4)  # still the ratio-is-1 property
    shared.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    monkeypatch.setattr(lp, "prefill_shared", lambda *args: None)
    calls.clear()
    plain = _logprobs(model, r)
    assert calls == [(8, r.prompt_ids.shape[1] + r.response_ids.shape[1])]
    assert torch.allclose(shared, plain, atol=1e-5)
    plain.sum().backward()
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_grouped_sampling_draws_what_unshared_sampling_draws(tiny, monkeypatch):
    from rung.llm import generation

    model, tok = tiny
    a = generate_grouped(model, tok, PROMPTS, num_generations=3, max_new_tokens=8, seed=2)
    monkeypatch.setattr(generation, "prefill_shared", lambda *args: None)
    b = generate_grouped(model, tok, PROMPTS, num_generations=3, max_new_tokens=8, seed=2)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_draw_follows_the_distribution_and_never_draws_a_zero():
    from rung.llm.generation import _draw

    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0]]).repeat(20000, 1)
    draws = _draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=6).float() / 20000
    assert freq[[0, 2, 5]].eq(0).all()
    assert torch.allclose(freq, probs[0], atol=0.015)


def test_padding_columns_after_every_response_change_nothing(tiny, monkeypatch):
    model, tok = tiny
    r = generate(model, tok, PROMPTS, max_new_tokens=6, seed=1)
    extra = 5
    ids = torch.nn.functional.pad(r.response_ids, (0, extra), value=tok.pad_token_id)
    mask = torch.nn.functional.pad(r.response_mask, (0, extra), value=False)
    seen = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, **kw: seen.append(kw["input_ids"].shape[1]) or forward(self, **kw))
    logp, entropy = token_logprobs(model, r.prompt_ids, r.prompt_mask, ids, mask, return_entropy=True)
    assert logp.shape == ids.shape and logp[:, -extra:].eq(0).all() and entropy[:, -extra:].eq(0).all()
    assert max(seen) == r.prompt_ids.shape[1] + r.response_ids.shape[1]  # the padding never reached the model
    assert torch.allclose(logp[:, :-extra], _logprobs(model, r), atol=1e-6)


def test_rollout_tensors_train(tiny):
    model, tok = tiny
    r = generate(model, tok, PROMPTS, max_new_tokens=5, seed=0)
    logp = _logprobs(model, r)
    assert logp.requires_grad
    (-(logp.exp() / r.logprobs.exp()).sum()).backward()  # rollout tensors are plain, not inference tensors
    assert model.lm_head.weight.grad is not None
    model.zero_grad()


def test_generation_errors(tiny):
    model, tok = tiny
    with pytest.raises(UserError, match="empty"):
        generate(model, tok, ["hi", ""])
    with pytest.raises(UserError, match="positions"):
        generate(model, tok, ["hi"], max_new_tokens=1000)
    with pytest.raises(UserError, match="num_generations"):
        generate_grouped(model, tok, ["hi"], num_generations=0)


def test_selected_and_concatenated_rows_keep_their_logprobs(tiny):
    # Two batches padded to different widths (prompts and responses), joined as dynamic sampling
    # joins them: every kept row must score what it scored in its own batch.
    model, tok = tiny
    a = generate(model, tok, PROMPTS, max_new_tokens=12, seed=1)
    b = generate(model, tok, ["7", "a much longer prompt than any of the others here"], max_new_tokens=5, seed=2)
    assert a.prompt_ids.shape[1] != b.prompt_ids.shape[1] and a.response_ids.shape[1] != b.response_ids.shape[1]
    picked = select_rows(a, torch.tensor([2, 0]))
    assert picked.texts == [a.texts[2], a.texts[0]] and picked.num_new_tokens == int(a.response_mask[[2, 0]].sum())
    joined = concat_rollouts([picked, b], padding_id(tok))
    assert joined.texts == picked.texts + b.texts and joined.num_new_tokens == picked.num_new_tokens + b.num_new_tokens
    with torch.no_grad():
        scored = _logprobs(model, joined)
        for rows, part in ((slice(0, 2), picked), (slice(2, 4), b)):
            T = part.response_ids.shape[1]
            torch.testing.assert_close(scored[rows, :T], _logprobs(model, part), rtol=0, atol=1e-5)
            assert scored[rows, T:].eq(0).all() and not joined.response_mask[rows, T:].any()
            torch.testing.assert_close(joined.logprobs[rows, :T], part.logprobs)

"""Objectives for RL on language models against numbers worked out by hand, and the property the
aggregation modes exist for: splitting a batch into micro-batches does not change the gradient."""

import math

import pytest
import torch

from rung.objectives import (
    clipped_token_pg_loss,
    gae,
    group_advantages,
    kl_penalty,
    masked_aggregate,
    masked_whiten,
    ppo_clip_loss,
    process_advantages,
    reinforce_token_loss,
    rloo_advantages,
    sft_loss,
    token_gae,
    token_rewards,
    value_loss,
)

T = torch.tensor
LN2 = math.log(2.0)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual.detach(), T(expected, dtype=actual.dtype), rtol=rtol, atol=atol)


# ---- group advantages ---------------------------------------------------------------------------

def test_group_advantages_by_hand():
    rewards = T([1.0, 0.0, 0.0, 1.0,   2.0, 2.0, 2.0, 2.0,   0.0, 0.0, 0.0, 3.0])
    adv = group_advantages(rewards, 4)
    # group 1: mean 0.5, deviations +-0.5, Bessel std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.866025
    # group 2: all equal -> 0
    # group 3: mean 0.75, deviations -0.75 x3 and 2.25, var (3 * 0.5625 + 5.0625) / 3 = 2.25, std 1.5
    expected = [0.866025, -0.866025, -0.866025, 0.866025, 0, 0, 0, 0, -0.5, -0.5, -0.5, 1.5]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    # Dr. GRPO: the deviations, undivided.
    adv = group_advantages(rewards, 4, scale="none")
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.75, -0.75, -0.75, 2.25])


@pytest.mark.parametrize("scale", ["std", "none"])
def test_group_advantages_equal_rewards_are_exactly_zero(scale):
    # In float32, 0.9 - mean(0.9 x 8) is -6e-8 and the std 6e-8: dividing by std + 1e-6 would give
    # every sample an advantage of -0.056. The group carries no signal and must give 0.
    rewards = torch.full((16,), 0.9)
    assert group_advantages(rewards, 8, scale=scale).tolist() == [0.0] * 16


def test_group_advantages_rejects_bad_groups():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(T([0.0, 1.0]), 2, scale="max")


def test_rloo_advantages_by_hand():
    adv = rloo_advantages(T([1.0, 2.0, 6.0, 5.0, 5.0, 5.0]), 3)
    # baselines: (2 + 6) / 2 = 4, (1 + 6) / 2 = 3.5, (1 + 2) / 2 = 1.5; equal group -> 0
    assert adv.tolist() == pytest.approx([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0])


# ---- aggregation --------------------------------------------------------------------------------

def aggregation_inputs():
    # nan on a masked token: the aggregate must not see it.
    per_token = T([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = T([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    return per_token, mask


def test_masked_aggregate_modes_by_hand():
    per_token, mask = aggregation_inputs()
    # tokens 1, 2, 4: sum 7 over 3 tokens; the third row has none.
    assert masked_aggregate(per_token, mask, "token_mean").item() == pytest.approx(7 / 3)
    assert masked_aggregate(per_token, mask, "token_mean", num_tokens=10).item() == pytest.approx(0.7)
    # sequence means 1.5, 4 and 0 (the empty row still counts as a sequence): 5.5 / 3
    assert masked_aggregate(per_token, mask, "seq_mean").item() == pytest.approx(5.5 / 3)
    assert masked_aggregate(per_token, mask, "seq_mean", num_sequences=4).item() == pytest.approx(5.5 / 4)
    # 7 / (3 sequences * 5 tokens of budget); 7 / (7 * 5)
    assert masked_aggregate(per_token, mask, "constant", max_tokens=5).item() == pytest.approx(7 / 15)
    assert masked_aggregate(per_token, mask, "constant", num_sequences=7, max_tokens=5).item() == pytest.approx(0.2)
    # float masks are read as 0/1 too; an all-masked micro-batch gives 0, not nan.
    assert masked_aggregate(per_token, mask.float(), "token_mean").item() == pytest.approx(7 / 3)
    assert masked_aggregate(per_token, torch.zeros_like(mask), "token_mean").item() == 0.0


def test_masked_aggregate_rejects_bad_modes():
    per_token, mask = aggregation_inputs()
    with pytest.raises(ValueError, match="max_tokens"):
        masked_aggregate(per_token, mask, "constant")
    with pytest.raises(ValueError, match="unknown mode"):
        masked_aggregate(per_token, mask, "sum")


# ---- clipped policy loss ------------------------------------------------------------------------

def test_clipped_token_pg_loss_asymmetric_by_hand():
    # Range [1 - 0.1, 1 + 0.3] = [0.9, 1.3]. Ratios below, inside and above it, then a masked
    # token whose log-ratio (100) would overflow exp in float32.
    log_ratio = T([[math.log(0.5), math.log(1.1), math.log(1.5), 100.0]] * 2)
    logprobs = log_ratio.clone().requires_grad_()
    mask = T([[1, 1, 1, 0]] * 2, dtype=torch.bool)
    adv = T([1.0, -1.0])
    loss, stats = clipped_token_pg_loss(logprobs, torch.zeros(2, 4), adv, mask, clip_low=0.1, clip_high=0.3)
    # A = +1: -min(r, clip(r)):  0.5 -> -0.5 (pessimistic: unclipped), 1.1 -> -1.1, 1.5 -> -1.3
    # A = -1:  max(r, clip(r)):  0.5 -> 0.9 (clipped),                 1.1 -> 1.1,  1.5 -> 1.5
    # (with a symmetric 0.2, the third and fourth would be -1.2 and 0.8)
    close(loss, [[-0.5, -1.1, -1.3, 0.0], [0.9, 1.1, 1.5, 0.0]])
    # d(-A r)/d log r = -A r where the unclipped term is chosen, 0 where the clipped one is.
    loss.sum().backward()
    close(logprobs.grad, [[-0.5, -1.1, 0.0, 0.0], [0.0, 1.1, 1.5, 0.0]])
    # Over the 6 masked tokens: 0.5 is below the range twice, 1.5 above it twice.
    assert stats["clipfrac_low"].item() == pytest.approx(2 / 6)
    assert stats["clipfrac_high"].item() == pytest.approx(2 / 6)
    assert stats["clipfrac"].item() == pytest.approx(4 / 6)
    assert stats["ratio_mean"].item() == pytest.approx((0.5 + 1.1 + 1.5) / 3)
    k3 = sum(r - 1 - math.log(r) for r in (0.5, 1.1, 1.5)) / 3
    assert stats["approx_kl"].item() == pytest.approx(k3, rel=1e-5)
    # Per-token advantages give the same as per-sequence ones broadcast.
    per_tok, _ = clipped_token_pg_loss(log_ratio, torch.zeros(2, 4), adv[:, None].expand(2, 4), mask,
                                       clip_low=0.1, clip_high=0.3)
    torch.testing.assert_close(per_tok, loss.detach())


def test_ppo_clip_loss_symmetric_unchanged_by_the_high_bound():
    # Ratios on and around both bounds: the generalised clipfrac must be bit-for-bit the old
    # |ratio - 1| > clip_coef, and the loss the same.
    g = torch.Generator().manual_seed(0)
    ratios = torch.cat([T([0.8, 1.2, 0.7999999, 1.2000001, 1.0]), 0.6 + 0.8 * torch.rand(200, generator=g)])
    lp, adv = ratios.log(), torch.randn(205, generator=g)
    loss, stats = ppo_clip_loss(lp, torch.zeros(205), adv, 0.2)
    loss2, stats2 = ppo_clip_loss(lp, torch.zeros(205), adv, 0.2, 0.2)
    assert torch.equal(loss, loss2)
    ratio = lp.exp()
    assert torch.equal(stats2["clipfrac"], ((ratio - 1).abs() > 0.2).float().mean())
    assert torch.equal(stats["clipfrac"], stats2["clipfrac"])


# ---- KL estimators ------------------------------------------------------------------------------

def test_kl_estimators_by_hand():
    logprobs = T([[math.log(0.5), math.log(0.25), -1.0, 3.0]])
    ref = T([[math.log(0.25), math.log(0.5), -1.0, -1e4]])
    # log r = ref - logprobs: -ln2 (r = 1/2), +ln2 (r = 2), 0; the last token is masked.
    mask = T([[1, 1, 1, 0]])
    k1 = kl_penalty(logprobs, ref, "k1", mask)
    k2 = kl_penalty(logprobs, ref, "k2", mask)
    k3 = kl_penalty(logprobs, ref, "k3", mask)
    close(k1, [[LN2, -LN2, 0.0, 0.0]])
    close(k2, [[LN2**2 / 2, LN2**2 / 2, 0.0, 0.0]])
    # (r - 1) - log r: 1/2 - 1 + ln2 = 0.193147; 2 - 1 - ln2 = 0.306853
    close(k3, [[0.5 - 1 + LN2, 1 - LN2, 0.0, 0.0]])
    assert (kl_penalty(torch.randn(50), torch.randn(50), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_penalty(logprobs, ref, "k4")


def test_kl_estimator_values_and_gradients_in_expectation():
    # Exact expectations over a 4-token vocabulary (weights pi(a), detached, as sampling gives):
    # k1 and k3 are unbiased for KL(pi || ref); as losses, k2's gradient is that of KL(pi || ref)
    # and k3's that of KL(ref || pi) -- the docstring's claim.
    logits = T([0.3, -1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(T([1.0, 0.0, -0.5, 0.2], dtype=torch.float64), -1)
    logp = torch.log_softmax(logits, -1)
    p = logp.exp().detach()
    reverse = (logp.exp() * (logp - ref)).sum()
    forward = (ref.exp() * (ref - logp)).sum()
    for kind in ("k1", "k3"):
        assert (p * kl_penalty(logp, ref, kind)).sum().item() == pytest.approx(reverse.item())

    def expected_grad(y):
        return torch.autograd.grad(y, logits, retain_graph=True)[0]

    zero = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(expected_grad((p * kl_penalty(logp, ref, "k1")).sum()), zero)
    torch.testing.assert_close(expected_grad((p * kl_penalty(logp, ref, "k2")).sum()), expected_grad(reverse))
    torch.testing.assert_close(expected_grad((p * kl_penalty(logp, ref, "k3")).sum()), expected_grad(forward))
    assert not torch.allclose(expected_grad(forward), expected_grad(reverse))


# ---- PPO on tokens ------------------------------------------------------------------------------

def test_token_rewards_places_score_on_last_response_token():
    score = T([1.0, 2.0, 3.0, 4.0])
    kl = T([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    mask = T([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    r = token_rewards(score, kl, mask, kl_coef=0.5)
    # row 0: -0.05, -0.1, -0.15 + 1; row 1: -0.25 + 2; row 2 has no response: nothing;
    # row 3: the score on the last of T tokens.
    close(r, [[-0.05, -0.1, 0.85, 0.0], [1.75, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]])


def test_token_gae_by_hand():
    # Row 0: three response tokens then padding (garbage reward and value, to be ignored).
    # Row 1: the same three tokens with a masked tool-output token between the first and second.
    rewards = T([[0.0, 0.0, 1.0, 9.0], [0.0, 9.0, 0.0, 1.0]])
    values = T([[0.5, 0.6, 0.7, 9.0], [0.5, 9.0, 0.6, 0.7]])
    mask = T([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    adv, ret = token_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # last:   delta = 1 - 0.7 = 0.3 (no bootstrap)           A = 0.3
    # middle: delta = 0.9 * 0.7 - 0.6 = 0.03                 A = 0.03 + 0.72 * 0.3 = 0.246
    # first:  delta = 0.9 * 0.6 - 0.5 = 0.04                 A = 0.04 + 0.72 * 0.246 = 0.21712
    close(adv, [[0.21712, 0.246, 0.3, 0.0], [0.21712, 0.0, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0, 0.0], [0.71712, 0.0, 0.846, 1.0]])


@pytest.mark.parametrize("seed", [0, 1])
def test_token_gae_matches_gae_on_contiguous_masks(seed):
    # With one contiguous run of response tokens per row (some starting late), token_gae is
    # rung's gae over (T, B) with the episode terminated at the last response token.
    g = torch.Generator().manual_seed(seed)
    B, Tn = 6, 9
    rewards, values = torch.randn(B, Tn, generator=g), torch.randn(B, Tn, generator=g)
    start = torch.randint(0, 3, (B,), generator=g)
    end = start + torch.randint(1, Tn - 2, (B,), generator=g)
    pos = torch.arange(Tn)
    mask = (pos >= start[:, None]) & (pos < end[:, None])
    last = pos == (end - 1)[:, None]
    next_values = torch.cat([values[:, 1:], torch.zeros(B, 1)], 1)
    # Every token outside the response is a one-step episode of its own, zeroed afterwards.
    terminated = last | ~mask
    no_trunc = torch.zeros(Tn, B, dtype=torch.bool)
    ref_adv, ref_ret = gae(rewards.T, values.T, next_values.T, terminated.T, no_trunc, 0.95, 0.9)
    adv, ret = token_gae(rewards, values, mask, 0.95, 0.9)
    torch.testing.assert_close(adv, ref_adv.T * mask)
    torch.testing.assert_close(ret, ref_ret.T * mask)


def test_masked_whiten_ignores_masked_entries():
    x = T([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = T([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    # 1..4: mean 2.5, Bessel std sqrt(5/3) = 1.290994
    s = math.sqrt(5 / 3)
    close(masked_whiten(x, mask), [[-1.5 / s, -0.5 / s, 0.0], [0.5 / s, 1.5 / s, 0.0]])
    # Statistics passed in (the global ones under DDP) are used as given.
    close(masked_whiten(x, mask, mean=0.0, std=2.0, eps=0.0), [[0.5, 1.0, 0.0], [1.5, 2.0, 0.0]])


def test_value_loss_reused_per_token():
    # rung's clipped value_loss is elementwise: per token on (B, T), then aggregated over the mask.
    values, returns, old = T([[1.0, 2.0, 7.0]]), T([[0.0, 0.0, 0.0]]), T([[0.5, 0.5, 0.5]])
    loss, _ = value_loss(values, returns, old, clip_coef=0.2)
    # token 0: max(1, 0.7^2) = 1; token 1: max(4, 0.49) = 4; token 2 masked
    assert masked_aggregate(loss, T([[1, 1, 0]]), "token_mean").item() == pytest.approx(2.5)


# ---- REINFORCE and SFT --------------------------------------------------------------------------

def test_reinforce_token_loss_by_hand():
    logprobs = T([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = T([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    loss, _ = reinforce_token_loss(logprobs, T([2.0, -1.0]), mask)
    close(loss, [[2.0, 4.0, 0.0], [-0.5, -0.5, -0.5]])
    loss.sum().backward()
    close(logprobs.grad, [[-2.0, -2.0, 0.0], [1.0, 1.0, 1.0]])


def test_sft_loss_ignores_prompt_tokens():
    probs = T([[[0.1, 0.1, 0.8], [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]])
    logprobs = probs.log()
    # Position 0 is the prompt (target -100, HF's ignore index); then targets 0 and 1.
    targets, mask = T([[-100, 0, 1]]), T([[0, 1, 1]], dtype=torch.bool)
    loss, stats = sft_loss(logprobs, targets, mask)
    # -ln 0.5 = ln 2; -ln 0.25 = 2 ln 2; argmax right on the first response token only.
    close(loss, [[0.0, LN2, 2 * LN2]])
    assert stats["accuracy"].item() == pytest.approx(0.5)
    # Logits (log-probabilities plus a constant) give the same loss.
    torch.testing.assert_close(sft_loss(logprobs + 3.0, targets, mask)[0], loss)


# ---- gradient-accumulation invariance -----------------------------------------------------------

LENGTHS = [6, 1, 3, 5, 2, 4, 6]
MAX_NEW_TOKENS = 8
SPLITS = {2: [[0, 1, 2], [3, 4, 5, 6]], 3: [[0, 1], [2, 3, 4], [5, 6]]}


def policy_batch():
    """A linear 'policy' W (d, V) over fixed token features: ragged responses with their sampled
    tokens, old log-probabilities off by some noise (so some ratios clip) and advantages."""
    g = torch.Generator().manual_seed(0)
    B, Tn, d, V = len(LENGTHS), max(LENGTHS), 4, 5
    W = torch.randn(d, V, generator=g, dtype=torch.float64).requires_grad_()
    feats = torch.randn(B, Tn, d, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, Tn), generator=g)
    mask = torch.arange(Tn) < T(LENGTHS)[:, None]
    with torch.no_grad():
        lp = torch.log_softmax(feats @ W, -1).gather(-1, ids[..., None]).squeeze(-1)
    old = lp + 0.3 * torch.randn(B, Tn, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return W, feats, ids, mask, old, adv


def micro_loss(W, batch, rows, mode, *, global_counts):
    _, feats, ids, mask, old, adv = batch
    # A micro-batch is padded only to its own longest response, as a collator would.
    Tl = max(LENGTHS[i] for i in rows)
    feats, ids, mask, old, adv = feats[rows, :Tl], ids[rows, :Tl], mask[rows, :Tl], old[rows, :Tl], adv[rows]
    lp = torch.log_softmax(feats @ W, -1).gather(-1, ids[..., None]).squeeze(-1)
    per_token, _ = clipped_token_pg_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    if global_counts:
        return masked_aggregate(per_token, mask, mode, num_tokens=sum(LENGTHS), num_sequences=len(LENGTHS),
                                max_tokens=MAX_NEW_TOKENS)
    # What a loop that forgets the split writes: this micro-batch's own counts and padded length.
    return masked_aggregate(per_token, mask, mode, max_tokens=Tl)


def grad_of(W, loss):
    return torch.autograd.grad(loss, W)[0]


def _whole(batch, W):
    _, feats, ids, mask, old, adv = batch
    lp = torch.log_softmax(feats @ W, -1).gather(-1, ids[..., None]).squeeze(-1)
    per_token, _ = clipped_token_pg_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    return per_token, mask


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "constant"])
@pytest.mark.parametrize("num_micro", [2, 3])
def test_gradient_accumulation_does_not_change_the_gradient(mode, num_micro):
    batch = policy_batch()
    W = batch[0]
    everything = list(range(len(LENGTHS)))
    full = grad_of(W, micro_loss(W, batch, everything, mode, global_counts=True))
    # Sanity: on the whole batch the global counts are the default ones (the generation budget aside).
    default = masked_aggregate(*_whole(batch, W), mode, max_tokens=MAX_NEW_TOKENS)
    torch.testing.assert_close(grad_of(W, default), full)

    accumulated = sum(grad_of(W, micro_loss(W, batch, rows, mode, global_counts=True)) for rows in SPLITS[num_micro])
    torch.testing.assert_close(accumulated, full)
    # DDP averages over processes: shards whose losses are scaled by the world size give it too.
    world = len(SPLITS[num_micro])
    averaged = sum(grad_of(W, world * micro_loss(W, batch, rows, mode, global_counts=True))
                   for rows in SPLITS[num_micro]) / world
    torch.testing.assert_close(averaged, full)

    # Local counts get it wrong, so the assertions above can fail.
    local = sum(grad_of(W, micro_loss(W, batch, rows, mode, global_counts=False)) for rows in SPLITS[num_micro])
    assert not torch.allclose(local, full, rtol=1e-3, atol=1e-6)


def test_process_advantages_by_hand():
    # One group of two responses. The first has two steps (right, then wrong) ending at tokens 1
    # and 3, the second one right step ending at token 2. Group step rewards {1, 0, 1}: mean 2/3,
    # Bessel std sqrt(1/3); so a right step normalises to +1/sqrt(3), a wrong one to -2/sqrt(3).
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    ends = torch.tensor([[1, 3], [2, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    right, wrong = 1 / math.sqrt(3), -2 / math.sqrt(3)
    adv = process_advantages(rewards, ends, mask, 2, 5)
    expected = torch.tensor([[right + wrong, right + wrong, wrong, wrong, 0.0],
                             [right, right, right, 0.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-5)
    # Without the std: deviations from the mean, 1/3 and -2/3.
    adv = process_advantages(rewards, ends, mask, 2, 5, scale="none")
    assert torch.allclose(adv[0], torch.tensor([-1 / 3, -1 / 3, -2 / 3, -2 / 3, 0.0]), atol=1e-6)
    assert torch.allclose(adv[1], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]), atol=1e-6)


def test_process_advantages_groups_apart_and_equal_groups_zero():
    # Two groups of two: the first all right (no signal, exactly 0), the second as one outcome
    # step each, where process supervision reduces to the outcome advantage on every token.
    rewards = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    ends = torch.tensor([[2], [2], [3], [3]])
    mask = torch.ones(4, 1, dtype=torch.bool)
    adv = process_advantages(rewards, ends, mask, 2, 4)
    assert torch.equal(adv[:2], torch.zeros(2, 4))
    outcome = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert torch.allclose(adv[2:], outcome.unsqueeze(-1).expand(2, 4), atol=1e-6)
    with pytest.raises(ValueError, match="groups of 3"):
        process_advantages(rewards, ends, mask, 3, 4)
    with pytest.raises(ValueError, match="alike"):
        process_advantages(rewards, ends[:, :0], mask, 2, 4)

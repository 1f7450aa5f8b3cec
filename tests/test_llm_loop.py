"""rung.llm.loop: the pieces the language-model loops share."""

import pytest
import torch

pytest.importorskip("transformers")

from rung.llm.config import LLMConfig  # noqa: E402
from rung.llm.generation import generate  # noqa: E402
from rung.llm.logprobs import token_logprobs  # noqa: E402
from rung.llm.loop import (  # noqa: E402
    WeightAverage,
    global_counts,
    rollout_logprobs,
    rollout_metrics,
    sample_step,
    scheduled_lr,
    step_seed,
)
from rung.llm.models import load_model  # noqa: E402
from rung.llm.tasks import get_task  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt")


def test_micro_batched_log_probs_equal_the_whole_batch(tiny):
    model, tokenizer = tiny
    rollout = generate(model, tokenizer, ["Number:", "What is 2 + 2?"] * 3, max_new_tokens=6, seed=0)
    whole = token_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
    with torch.no_grad():
        torch.testing.assert_close(rollout_logprobs(model, rollout, 4, 1.0), whole.detach(), rtol=0, atol=1e-5)


def test_global_counts_are_the_tokens_and_rows_and_never_divide_by_zero():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert [float(x) for x in global_counts(mask, 1)] == [3.0, 2.0]
    assert float(global_counts(torch.zeros(2, 3, dtype=torch.bool), 1)[0]) == 1.0


def test_a_step_samples_the_same_responses_whenever_it_runs(tiny):
    model, tokenizer = tiny
    cfg = LLMConfig(model="tiny-gpt", task="target_token", batch_size=2, max_new_tokens=4, chat_template=False)
    task = get_task("target_token", target="t")
    gen = torch.Generator()
    first = sample_step(model, tokenizer, task, cfg, 3, 0, 4, gen)
    sample_step(model, tokenizer, task, cfg, 4, 0, 4, gen)  # the generator's state in between does not matter
    again = sample_step(model, tokenizer, task, cfg, 3, 0, 4, gen)
    assert first[1].texts == again[1].texts and torch.equal(first[2], again[2])
    assert len(first[0]) == 2 and first[1].response_ids.shape[0] == 8
    assert len({step_seed(1, s, r) for s in range(1, 50) for r in range(4)}) == 49 * 4
    assert len({step_seed(1, s, r, k) for s in range(1, 50) for r in range(4) for k in range(4)}) == 49 * 4 * 4
    assert step_seed(1, 3, 0, 0) == step_seed(1, 3, 0)
    # Prompts i = 0, 1, ... of a batch take seed + i, so every two seeds must be a batch apart
    # (ranks of one step once drew the same prompts shifted by one).
    seeds = sorted(step_seed(1, s, r, k) for s in range(1, 50) for r in range(4) for k in range(4))
    assert min(b - a for a, b in zip(seeds, seeds[1:])) >= 1_009
    assert step_seed(1, 3, 0) == (1 * 1_000_003 + 3) * 1_009  # process 0 draws what recorded runs drew
    assert sample_step(model, tokenizer, task, cfg, 3, 0, 4, gen, attempt=1)[1].texts != first[1].texts
    metrics = rollout_metrics(task, first[1], first[2], first[3])
    assert metrics["llm/accuracy"] == pytest.approx(float(first[2].mean()))
    assert metrics["llm/response_length"] <= 4


def test_learning_rate_schedules_by_hand():
    lrs = lambda schedule, warmup=0: [scheduled_lr(1.0, s, 4, schedule, warmup) for s in range(1, 5)]  # noqa: E731
    assert lrs("constant") == [1.0] * 4
    assert lrs("linear") == [1.0, 0.75, 0.5, 0.25]
    assert lrs("cosine") == pytest.approx([1.0, 0.5 + 0.5 * 2 ** -0.5, 0.5, 0.5 - 0.5 * 2 ** -0.5])
    assert lrs("linear", warmup=2) == [0.5, 1.0, 1.0, 0.5]
    assert lrs("constant", warmup=2) == [0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown schedule"):
        scheduled_lr(1.0, 3, 4, "step")


def test_the_weight_average_by_hand_and_swapped_in_only_inside_its_block():
    layer = torch.nn.Linear(1, 1)
    layer.bias.requires_grad_(False)  # frozen weights are not averaged
    with torch.no_grad():
        layer.weight.fill_(1.0)
    avg = WeightAverage(layer, decay=0.75)
    with torch.no_grad():
        layer.weight.fill_(5.0)
    avg.update()  # 0.75 * 1 + 0.25 * 5
    with torch.no_grad():
        layer.weight.fill_(3.0)
    avg.update()  # 0.75 * 2 + 0.25 * 3
    assert avg.names == ["weight"] and avg.average[0].item() == pytest.approx(2.25)
    with avg.swapped_in():
        assert layer.weight.item() == pytest.approx(2.25)
    assert layer.weight.item() == 3.0
    other = WeightAverage(layer, decay=0.75)
    other.load_state_dict(avg.state_dict())
    assert other.average[0].item() == pytest.approx(2.25)


def test_the_weight_average_of_bfloat16_weights_is_taken_over_their_float32_masters():
    from rung.llm.loop import Float32Master

    layer = torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    master = Float32Master(layer)
    avg = WeightAverage(layer, decay=0.5, master=master)
    with torch.no_grad():
        master.master[0].fill_(1.001)  # a step below bfloat16's spacing at 1.0 (1/128)
    master.put_weights()
    assert layer.weight.item() == 1.0  # the rounded weight did not move
    avg.update()
    assert avg.average[0].item() == pytest.approx(1.0005)


def test_bfloat16_weights_are_stepped_through_float32_masters():
    from rung.llm.loop import Training, make_optimizer

    model, _ = load_model("tiny-gpt", dtype=torch.bfloat16)
    cfg = LLMConfig(model="tiny-gpt", task="target_token", learning_rate=1e-5)
    params, optimizer, master = make_optimizer(model, {}, cfg)
    start = [m.detach().clone() for m in master.master]
    training = Training(params, optimizer, {}, None, cfg, 10, None, master)
    ids = torch.randint(0, model.config.vocab_size, (4, 12))
    model(ids, labels=ids).loss.backward()
    training.step(1, 1)
    moved = sum(int((m != s0).sum()) for m, s0 in zip(master.master, start)) / sum(m.numel() for m in start)
    # Stepping the bfloat16 weights themselves moved 19% of them at this learning rate.
    assert moved > 0.8
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(master.low, master.master))
    assert all(p.grad is None for p in master.low)  # the loops' zero_grad reaches the masters only
    again, _ = load_model("tiny-gpt", dtype=torch.bfloat16)
    other = make_optimizer(again, {}, cfg)[2]
    other.load_state_dict(master.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.master, master.master))
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters()))
    assert make_optimizer(load_model("tiny-gpt")[0], {}, cfg)[2] is None  # float32 weights need none

"""rung's own small GRU language model (rung/llm/small.py): the generation and log-prob interface
with left padding, state_dict and folder round trips, its tokenizer and corpus, pretraining, GRPO
on it, and the sentiment recipe (recipes/llm/sentiment.py)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("vaderSentiment")

from rung.algos import grpo  # noqa: E402
from rung.llm import small  # noqa: E402
from rung.llm.generation import generate  # noqa: E402
from rung.llm.logprobs import token_logprobs  # noqa: E402
from rung.errors import UserError  # noqa: E402
from rung.llm.models import LoraConfig, load_model, reference_copy  # noqa: E402
from rung.llm.rewards.sentiment import sentiment_reward  # noqa: E402

PROMPTS = ["The movie was", "I think this restaurant is", "My café"]  # different lengths: left padding
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "llm" / "sentiment.py"


@pytest.fixture(scope="module")
def gru():
    return load_model("small-gru")


@pytest.fixture
def eos_biased(gru):
    """The untrained model with eos's logit raised, so that some responses end early and others
    run to max_new_tokens (right padding after eos, as well as left padding before the prompt)."""
    model, tok = gru
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 3.0
    handle = model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    yield model, tok
    handle.remove()


def _logprobs(model, r, **kw):
    return token_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, **kw)


def _ids(tok, text):
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def test_loads_with_pad_on_left_and_inits_deterministically(gru):
    model, tok = gru
    assert isinstance(model, small.SmallGRU) and not model.training
    assert tok.pad_token is not None and tok.padding_side == "left"
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id and model.device == torch.device("cpu")
    rng = torch.get_rng_state()
    again = small.small_gru(tok, seed=0)
    assert torch.equal(rng, torch.get_rng_state())  # seeding the init leaves the global RNG alone
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(small.small_gru(tok, seed=1).lm_head.weight, model.lm_head.weight)


def test_bad_folders_and_lora_are_one_line_user_errors(tmp_path):
    (tmp_path / small.CONFIG_FILE).write_text("{}")
    with pytest.raises(UserError, match="could not load the small model") as e:
        load_model(str(tmp_path))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="LoRA does not apply"):
        load_model("small-gru", lora=LoraConfig())


def test_untrained_model_is_random(gru):
    model, tok = gru
    logits = model(input_ids=_ids(tok, "The movie was")).logits[0, -1]
    entropy = -(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).sum()
    assert entropy > 0.95 * math.log(len(tok))  # close to uniform over the vocabulary


@pytest.mark.parametrize("which", ["gru", "eos_biased"])
def test_generated_logprobs_match_token_logprobs(which, request):
    model, tok = request.getfixturevalue(which)
    for temperature in (1.0, 0.7, 0.0):
        r = generate(model, tok, PROMPTS * 3, max_new_tokens=12, temperature=temperature, top_p=0.9, seed=1)
        assert r.prompt_mask.sum(1).unique().numel() == 3  # the prompts really are padded differently
        recomputed = _logprobs(model, r, temperature=temperature)
        assert recomputed.dtype == torch.float32
        assert torch.allclose(recomputed, r.logprobs, atol=1e-4), temperature
        assert recomputed[~r.response_mask].eq(0).all()
        if which == "eos_biased" and temperature > 0:  # responses of several lengths, some ended by eos
            assert r.truncated.any() and (~r.truncated).any()


def test_padded_batch_equals_each_sequence_alone(eos_biased):
    model, tok = eos_biased
    r = generate(model, tok, PROMPTS * 2, max_new_tokens=10, seed=3)
    assert r.response_mask.sum(1).unique().numel() > 1
    batched = _logprobs(model, r)
    for i, prompt in enumerate(PROMPTS * 2):
        p = _ids(tok, prompt)
        n = int(r.response_mask[i].sum())
        resp = r.response_ids[i : i + 1, :n]
        ones = torch.ones_like(p, dtype=torch.bool), torch.ones_like(resp, dtype=torch.bool)
        alone = token_logprobs(model, p, ones[0], resp, ones[1])
        assert torch.allclose(alone, batched[i : i + 1, :n], atol=1e-5)
        # The same numbers from the plain forward without masks, positions or cache.
        full = model(input_ids=torch.cat([p, resp], 1)).logits[0, p.shape[1] - 1 : -1].log_softmax(-1)
        assert torch.allclose(full.gather(-1, resp[0, :, None]).squeeze(-1), alone[0], atol=1e-5)


def test_cache_and_logits_to_keep(gru):
    model, tok = gru
    ids = _ids(tok, "The movie was very")
    full = model(input_ids=ids).logits
    first = model(input_ids=ids[:, :2], use_cache=True)
    rest = model(input_ids=ids[:, 2:], attention_mask=torch.ones_like(ids), past_key_values=first.past_key_values,
                 use_cache=True, logits_to_keep=1)
    assert rest.logits.shape == (1, 1, len(tok)) and first["past_key_values"].shape == (1, 1, 128)
    assert torch.allclose(rest.logits[0, -1], full[0, -1], atol=1e-5)
    assert model(input_ids=ids).past_key_values is None  # use_cache=False keeps no state
    # Masked tokens pass the state on unchanged, also in a row with no real token in this call.
    two = model(input_ids=ids[:, :2].repeat(2, 1), use_cache=True).past_key_values
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    step = model(input_ids=ids[:, 2:].repeat(2, 1), attention_mask=mask, past_key_values=two, use_cache=True)
    whole = model(input_ids=ids, use_cache=True).past_key_values
    assert torch.allclose(step.past_key_values[:, 0], whole[:, 0], atol=1e-6)
    assert torch.equal(step.past_key_values[:, 1], two[:, 1])


def test_state_dict_and_folder_round_trip(gru, tmp_path):
    model, tok = gru
    x = _ids(tok, "The movie was great and")
    fresh = small.small_gru(tok, seed=5)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert torch.equal(fresh(input_ids=x).logits, model(input_ids=x).logits)

    small.save_small(model, tok, tmp_path / "folder")
    loaded, ltok = load_model(str(tmp_path / "folder"))
    assert isinstance(loaded, small.SmallGRU) and ltok.padding_side == "left"
    assert ltok.pad_token_id == tok.pad_token_id and ltok.eos_token_id == tok.eos_token_id
    assert ltok("The café was 3 € cheaper")["input_ids"] == tok("The café was 3 € cheaper")["input_ids"]
    assert torch.equal(loaded(input_ids=x).logits, model(input_ids=x).logits)
    ref = reference_copy(loaded)  # the KL reference GRPO takes: a frozen deep copy
    assert not any(p.requires_grad for p in ref.parameters())
    assert torch.equal(ref(input_ids=x).logits, model(input_ids=x).logits)


def test_tokenizer_round_trip_and_corpus_words_are_tokens():
    tok = small.small_tokenizer()
    assert tok.get_vocab() == small.small_tokenizer().get_vocab()  # deterministic training
    texts = small.corpus()[:200] + ["The café was 3 € cheaper!\n", "naïve 🙂 words it never saw", "  two  spaces"]
    for text in texts:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    words = {w for kind in (small.POSITIVE, small.NEGATIVE, small.NEUTRAL) for w in kind}
    assert all(len(tok(f" {w}", add_special_tokens=False)["input_ids"]) == 1 for w in words)


def test_corpus_is_deterministic_and_balanced_in_sentiment():
    texts = small.corpus()
    assert texts == small.corpus() and texts != small.corpus(seed=1) and len(texts) == 3000
    rewards = [sentiment_reward(t) for t in texts]
    # Neutral on average, with plenty of clearly positive and clearly negative sentences.
    assert 0.45 < sum(rewards) / len(rewards) < 0.6
    assert sum(r > 0.7 for r in rewards) > 800 and sum(r < 0.3 for r in rewards) > 800
    assert all(sentiment_reward(w) > 0.6 for w in small.POSITIVE)
    assert all(sentiment_reward(w) < 0.4 for w in small.NEGATIVE)
    assert all(sentiment_reward(w) == 0.5 for w in small.NEUTRAL)


def test_pretraining_lowers_the_loss_and_is_reproducible():
    tok = small.small_tokenizer()
    a, b = small.small_gru(tok, seed=2), small.small_gru(tok, seed=2)
    losses = small.pretrain(a, tok, steps=12, seed=2)
    assert small.pretrain(b, tok, steps=12, seed=2) == losses
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # From about log(vocab), the loss of a uniform guess, to ~3.3 nats within 12 steps.
    assert losses[0] > math.log(len(tok)) - 0.5 and sum(losses[-3:]) / 3 < losses[0] - 2.0


def _grpo_cfg(run_dir, **kw):
    return grpo.Config(**{**dict(model="small-gru", task="sentiment", chat_template=False, max_new_tokens=6,
                                 batch_size=4, num_generations=4, learning_rate=1e-3, kl_coef=0.1, total_steps=2,
                                 eval_prompts=4, eval_every=0, checkpoint_every=1, run_dir=str(run_dir)), **kw})


def _weights(result):
    return torch.load(result.run_dir / "checkpoints" / "latest.pt", weights_only=False)["model"]


def test_grpo_trains_every_parameter_and_resumes_from_its_checkpoint(tmp_path):
    full = grpo.train(_grpo_cfg(tmp_path / "full"))
    after = _weights(full)
    start = load_model("small-gru")[0].state_dict()
    assert after.keys() == start.keys()
    # Whole tensors: the embedding rows of tokens never seen keep their values, the tensor moves.
    unchanged = [k for k in start if torch.equal(after[k], start[k])]
    assert not unchanged, unchanged
    assert 0.0 <= full.summary["eval_reward_mean_after"] <= 1.0
    # The model's state_dict in a rung checkpoint is all a resumed run needs of it.
    grpo.train(_grpo_cfg(tmp_path / "cut", total_steps=1))
    resumed = grpo.train(_grpo_cfg(tmp_path / "cut"), resume=True)
    assert all(torch.equal(after[k], v) for k, v in _weights(resumed).items())


def _recipe():
    spec = importlib.util.spec_from_file_location("llm_sentiment_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_quick_writes_plot_and_summary(tmp_path):
    out = tmp_path / "sentiment"
    assert _recipe().main(["--quick", "--seeds", "1", "--out", str(out)]) == 0
    r = json.loads((out / "sentiment.json").read_text())
    assert (out / "sentiment.png").stat().st_size > 0 and r["target"] == 0.8
    [seed] = r["seeds"]
    assert seed["steps"] == 2 and len(seed["rewards"]) == 2 and len(seed["samples_after"]) == 6
    # GRPO started from the pretrained folder the recipe wrote.
    assert f"model: {out / 'seed1' / 'small-gru-pretrained'}" in (out / "seed1" / "grpo" / "config.yaml").read_text()


@pytest.mark.slow
def test_recipe_moves_sentiment_from_neutral_to_positive(tmp_path):
    # The recipe's default settings (200 pretraining steps, 60 GRPO steps, lr 2e-3, kl 0.2).
    # Calibrated over seeds 1-5 on this 2-core machine: start (step 1) reward 0.46-0.55, end (mean
    # of the last 5 steps) 0.87-0.93, held-out greedy reward 0.24-0.48 before and 0.90-0.98 after;
    # 20-35 s a seed (this test, seed 1: start 0.462, end 0.926, held-out 0.983).
    recipe = _recipe()
    result = recipe.run(recipe.parse_args(["--seeds", "1", "--out", str(tmp_path / "out")]))
    [r] = result["seeds"]
    assert 0.35 < r["start_reward"] < 0.65  # the pretrained model starts near neutral
    assert r["end_reward"] >= 0.8  # the recipe's target: 0.8 of the maximum reward
    assert r["eval_reward_after"] >= 0.8

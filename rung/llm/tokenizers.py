"""Tokenizers: a small byte-level BPE trained locally, and chat prompts.

Simplified: `train_tokenizer` has no normaliser and no post-processor (BOS is never added
automatically; put it in the prompt text when a model wants one), and `chat_prompt` falls back to
plain text, not to a made-up template, for tokenizers that carry none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rung.errors import UserError, missing_dependency

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"


def train_tokenizer(
    texts: list[str],
    vocab_size: int = 512,
    *,
    min_frequency: int = 1,
    special_tokens: tuple[str, str, str] = (PAD, BOS, EOS),
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it as a transformers fast tokenizer.

    `special_tokens` are (pad, bos, eos) and get ids 0, 1, 2. The 256 byte symbols are always in
    the vocabulary, so any string round-trips, and `vocab_size` must leave room for them.
    Training is deterministic: the same texts give the same vocabulary and merges.
    Padding is on the left, as generation needs.
    """
    if not texts or not all(isinstance(t, str) for t in texts):
        raise UserError("train_tokenizer needs a non-empty list of strings")
    if vocab_size < 256 + len(special_tokens):
        least = 256 + len(special_tokens)
        raise UserError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {least}")
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:
        raise missing_dependency(e.name or "transformers", "llm") from None

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    pad, bos, eos = special_tokens
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos, padding_side="left"
    )


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user_text: str, system: str | None = None) -> str:
    """The prompt text for one user turn, ready for generation.

    With a chat template (instruction-tuned models), the template is applied with the assistant's
    turn opened. Without one, the text is returned as is, after `system` and a blank line if given.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": user_text})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return user_text if system is None else f"{system}\n\n{user_text}"

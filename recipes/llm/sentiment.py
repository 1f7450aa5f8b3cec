"""Sentiment with rung's own small GRU: pretrain it on simple sentences, then GRPO it toward positive
completions, in one command.

    python recipes/llm/sentiment.py --seeds 1 2 3 --out runs/llm/sentiment
    python recipes/llm/sentiment.py --kl-coef 0 --out runs/llm/sentiment-nokl     (the reward hack)
    python recipes/llm/sentiment.py --quick --out /tmp/sentiment                   (seconds; a smoke test)

For each seed:
1. builds `small-gru` (rung/llm/small.py) initialised from the seed and fits it to the small
   model's built-in corpus for --pretrain-steps next-word steps (0 skips this: GRPO then starts
   from random weights), saved as OUT/seedN/small-gru-pretrained, a folder that
   `rung train grpo --model` reads;
2. trains it with GRPO on the sentiment task (rung.algos.grpo.train; reward = VADER compound
   mapped to [0, 1], 0.5 neutral) into the run folder OUT/seedN/grpo, with a KL penalty to the
   pretrained model (--kl-coef);
3. prints the start and end mean reward and a few completions before and after.
Then it writes OUT/sentiment.png (training reward and response length per step, every seed) and
OUT/sentiment.json, and prints the table. Without --quick the exit status is 1 when a seed's end
reward is below the target (0.8 of the maximum reward), so the command checks the recipe's claim.

"Start" is the mean reward of the first step's samples (the pretrained policy, before any update;
batch_size x num_generations samples at temperature 1); "end" the mean over the last END_WINDOW
steps' samples. The held-out figures are the greedy completions of the task's test prompts,
before and after, as GRPO logs them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rung import checkpoint
from rung.algos import grpo
from rung.errors import UserError
from rung.llm import small
from rung.llm.generation import generate
from rung.llm.models import load_model
from rung.llm.tasks import SENTENCE_STARTS, get_task
from rung.logging import read_metrics
from rung.logging.plots import _pyplot
from rung.run import write_json_atomic

TARGET = 0.8
"""The recipe's claim: the end mean reward reaches this fraction of the task's maximum."""
END_WINDOW = 5
"""Steps averaged for the end reward: one step's 64 samples are noisy (std of the mean ~0.02-0.03)."""
# Pretraining settings (calibrated: the loss flattens near 1.75 nats/token by 200 steps).
PRETRAIN_BATCH, PRETRAIN_LR = 32, 5e-3
QUICK = {"pretrain_steps": 5, "steps": 2}
FULL = {"pretrain_steps": 200, "steps": 60}
SAMPLE_PROMPTS = 6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default 1 2 3)")
    p.add_argument("--out", default="runs/llm/sentiment", help="output folder; its seed folders are overwritten")
    p.add_argument("--pretrain-steps", type=int, help="next-word steps on the corpus (default 200; 0: start GRPO "
                   "from random weights; --quick 5)")
    p.add_argument("--steps", type=int, help="GRPO optimizer steps (default 60; --quick 2)")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="GRPO learning rate (default 2e-3)")
    p.add_argument("--kl-coef", type=float, default=0.2,
                   help="weight of KL(policy || pretrained model) in the GRPO loss (default 0.2; 0 lets the "
                        "policy drift into repeating the most positive words)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens per completion at most (default 16)")
    p.add_argument("--quick", action="store_true", help="tiny budgets for a smoke test; explicit flags still win")
    a = p.parse_args(argv)
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.pretrain_steps < 0:
        raise UserError(f"--pretrain-steps must be >= 0, got {a.pretrain_steps}")
    return a


def grpo_config(a: argparse.Namespace, seed: int, model: str, run_dir: Path) -> grpo.Config:
    return grpo.Config(
        model=model, task="sentiment", chat_template=False, seed=seed, run_dir=str(run_dir),
        total_steps=a.steps, learning_rate=a.learning_rate, kl_coef=a.kl_coef, max_new_tokens=a.max_new_tokens,
        batch_size=8, num_generations=8, micro_batch_size=64,
        # The test split holds 8 sentence starts; more held-out prompts would repeat them greedily.
        eval_prompts=8, eval_every=10, checkpoint_every=max(a.steps, 1),
    )  # fmt: skip


def samples(model: Any, tokenizer: Any, seed: int, max_new_tokens: int) -> list[str]:
    """Sampled completions (temperature 1, as in training) of the first few sentence starts."""
    model.eval()
    prompts = list(SENTENCE_STARTS[:SAMPLE_PROMPTS])
    rollout = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    return [p + t for p, t in zip(prompts, rollout.texts)]


def run_seed(a: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    tokenizer = small.small_tokenizer()
    model = small.small_gru(tokenizer, seed=seed)
    losses = []
    if a.pretrain_steps > 0:
        losses = small.pretrain(model, tokenizer, steps=a.pretrain_steps, batch_size=PRETRAIN_BATCH,
                                learning_rate=PRETRAIN_LR, seed=seed)
    folder = small.save_small(model, tokenizer, out / f"seed{seed}" / "small-gru-pretrained")
    t_pretrain = time.perf_counter() - t0
    before = samples(model, tokenizer, seed, a.max_new_tokens)

    t1 = time.perf_counter()
    result = grpo.train(grpo_config(a, seed, str(folder), out / f"seed{seed}" / "grpo"), force=True)
    t_grpo = time.perf_counter() - t1
    rows = read_metrics(result.run_dir)
    rewards = [r["llm/reward_mean"] for r in rows if "llm/reward_mean" in r]
    lengths = [r["llm/response_length"] for r in rows if "llm/response_length" in r]
    trained, _ = load_model(str(folder))
    trained.load_state_dict(checkpoint.load(result.run_dir / "checkpoints" / "latest.pt")["model"])
    s = result.summary
    return {
        "seed": seed, "run_dir": str(result.run_dir), "pretrained": str(folder),
        "pretrain_loss_end": statistics.mean(losses[-20:]) if losses else None,
        "start_reward": rewards[0], "end_reward": statistics.mean(rewards[-END_WINDOW:]), "steps": len(rewards),
        "eval_reward_before": s["eval_reward_mean_before"], "eval_reward_after": s["eval_reward_mean_after"],
        "pretrain_seconds": round(t_pretrain, 1), "grpo_seconds": round(t_grpo, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "rewards": rewards, "response_lengths": lengths,
        "samples_before": before, "samples_after": samples(trained, tokenizer, seed, a.max_new_tokens),
    }


def plot(out: Path, seeds: list[dict[str, Any]], target: float) -> Path:
    plt = _pyplot()
    fig, (ax, ax_len) = plt.subplots(1, 2, figsize=(11, 4))
    for r in seeds:
        steps = range(1, len(r["rewards"]) + 1)
        line, = ax.plot(steps, r["rewards"], lw=1.2, label=f"seed {r['seed']}")
        ax_len.plot(steps, r["response_lengths"], lw=1.2, c=line.get_color())
    ax.axhline(target, c="k", ls="--", lw=0.8, label=f"target ({target:g})")
    ax.axhline(0.5, c="grey", ls=":", lw=0.8, label="neutral (0.5)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("mean reward of the step's samples")
    ax_len.set_ylabel("mean response length (tokens)")
    for axis in (ax, ax_len):
        axis.set_xlabel("GRPO step")
        axis.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("small-gru, pretrained on simple sentences, then GRPO on the sentiment reward", fontsize=9)
    fig.tight_layout()
    path = out / "sentiment.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)  # pretraining is deterministic for a seed at a fixed thread count, as runs are
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    target = TARGET * get_task("sentiment").max_reward
    seeds = []
    for seed in a.seeds:
        r = run_seed(a, seed, out)
        seeds.append(r)
        print(f"seed {seed}: reward {r['start_reward']:.3f} -> {r['end_reward']:.3f} (held-out greedy "
              f"{r['eval_reward_before']:.3f} -> {r['eval_reward_after']:.3f}) in {r['steps']} steps, {r['seconds']:.0f} s",
              flush=True)
        for b, after in zip(r["samples_before"][:3], r["samples_after"][:3]):
            print(f"    before: {b!r}\n    after:  {after!r}")
    result = {"target": target, "end_window": END_WINDOW, "pretrain_steps": a.pretrain_steps, "steps": a.steps,
              "learning_rate": a.learning_rate, "kl_coef": a.kl_coef, "max_new_tokens": a.max_new_tokens,
              "seeds": seeds, "plot": str(plot(out, seeds, target))}
    write_json_atomic(out / "sentiment.json", result)
    print_table(result)
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"\nsmall-gru on sentiment: {r['pretrain_steps']} pretraining steps, {r['steps']} GRPO steps, "
          f"lr {r['learning_rate']:g}, kl {r['kl_coef']:g}; target {r['target']:g}")
    print(f"{'seed':>5} {'start':>7} {'end':>7} {'held-out':>15} {'steps':>6} {'pretrain s':>11} {'grpo s':>7} {'total s':>8}")
    for s in r["seeds"]:
        held = f"{s['eval_reward_before']:.3f}->{s['eval_reward_after']:.3f}"
        print(f"{s['seed']:>5} {s['start_reward']:>7.3f} {s['end_reward']:>7.3f} {held:>15} {s['steps']:>6} "
              f"{s['pretrain_seconds']:>11.1f} {s['grpo_seconds']:>7.1f} {s['seconds']:>8.1f}")
    print(f"plot {r['plot']}; all of it in {Path(r['plot']).with_name('sentiment.json')}")


def main(argv: list[str] | None = None) -> int:
    try:
        a = parse_args(argv)
        result = run(a)
    except UserError as e:
        print(f"sentiment: error: {e}", file=sys.stderr)
        return 2
    # --quick budgets cannot reach the target; only a full run is held to it.
    return 0 if a.quick or all(s["end_reward"] >= result["target"] for s in result["seeds"]) else 1


if __name__ == "__main__":
    sys.exit(main())

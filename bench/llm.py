"""rung GRPO against TRL's GRPOTrainer on a language model, same settings, same run.

    python bench/llm.py                  # smollm2-135m on arithmetic, 8 prompts x 8, 128 tokens, 5 steps; roughly
                                         # 30-60 min on 2 cores (about 3-5 min a step per side, both sides)
    python bench/llm.py --quick          # tiny-gpt, 2 steps: a smoke test of the script, 1-2 min (mostly imports)

Both sides start from the same weights and tokenizer (`rung.llm.models.load_model`, which reads the
cached conversion of smollm2-135m; a separate child process creates the cache first if it is
missing, so its cost stays off both sides' clocks and memory), train on the same prompts (each
step's train prompts exactly as rung draws them, handed to TRL in that order with shuffling off,
wrapped in the same chat template and scored by the same task reward) and use the same settings:

    prompts per step (batch)  --prompts            TRL: generation batch = prompts * num_generations completions
    group size                --num-generations    TRL: num_generations
    max new tokens            --max-new-tokens     TRL: max_completion_length
    micro-batch (sequences)   --micro-batch-size   TRL: per_device_train_batch_size (it counts completions), with
                                                   gradient_accumulation_steps = steps_per_generation = batch / micro
    one generation per optimizer step, one pass over it (rung update_epochs 1; TRL num_iterations 1)
    learning rate, constant   --learning-rate      TRL: lr_scheduler_type "constant" (its default decays linearly)
    AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0, torch's plain AdamW on both (TRL: optim "adamw_torch";
          its default is the fused kernel, which rung does not use)
    gradient clipping at norm 1.0; clip 0.2 both sides (rung clip_low/high; TRL epsilon/epsilon_high)
    no KL term (rung kl_coef 0, no reference model; TRL beta 0, no reference model)
    loss: token mean over every completion token of the batch (rung token_mean; TRL loss_type "dapo")
    advantages: (reward - group mean) / group std (rung scale_rewards std; TRL scale_rewards "group")
    sampling: temperature 1.0, top_p 1.0, no top-k, stop at the model's eos ids
    float32 weights, no autocast (TRL bf16 False, use_cpu True), no gradient checkpointing (TRL turns it on
          by default; rung has none), dropout off (both use the model loaded by rung, which switches it off)
    the same torch thread count (--threads), set in each child before anything runs

Not matched, because one side has no such switch:
  - rung runs each prompt's forward once per group, in sampling and in the update, and hands the
    group's completions a copy of its key/value cache (rung.llm.logprobs.prefill_shared); TRL runs
    the prompt once per completion. It draws tokens by inverting the cumulative distribution, TRL
    (through transformers' generate) with torch.multinomial. These are where most of rung's lead
    comes from; neither changes what is computed beyond float rounding.
  - TRL computes each token's entropy in its training forward (its fused lm-head path always asks for
    it) and writes its metrics to an in-memory dict every step; its logging to the console and disk
    is off (logging_strategy "no", report_to "none", no saving, no evaluation).
  - rung writes a metrics line (jsonl and TensorBoard) every step; it scores one held-out prompt
    greedily before and after training (its evaluation cannot be switched off), off its clock.
  - TRL shuffles the completions of a step before cutting them into micro-batches (order only).
  - The advantage's epsilon: rung (r - mean) / (std + 1e-6), exactly 0 for an all-equal group; TRL
    (r - mean) / (std + 1e-4). Sampling draws from different random streams, so the two sides
    generate different responses with different lengths: the response tokens per step are
    reported next to the speed, and tokens/s beside samples/s.

Measured per side, each in its own child process: samples/s = completions generated and trained on
per second of the training loop (from the first step's start to the last step's end; model loading,
trainer construction and rung's held-out scoring are off the clock), seconds per optimizer step
(median over the steps after the first), and peak resident memory, read with
resource.getrusage(RUSAGE_SELF).ru_maxrss inside the child when its training loop ends (the peak
of the whole child up to then: imports, model loading and training) and again at its exit; the
table also gives each child's RSS after its imports, before the model is loaded.

Run it on an otherwise idle machine: with as many torch threads as cores, another busy process
slows every op (OpenMP waits for the thread whose core is taken: on this 2-core machine, shared
with three other jobs, the same small matmul took 2.6 ms in one minute and 32 ms in another), and
it does not slow both sides alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

DEFAULTS = {"model": "smollm2-135m", "task": "arithmetic", "steps": 5, "prompts": 8, "num_generations": 8,
            "max_new_tokens": 128, "micro_batch_size": 16, "learning_rate": 1e-5, "threads": 2, "seed": 1,
            "chat_template": True, "out": "bench/out/llm.json"}
QUICK = {"model": "tiny-gpt", "task": "arithmetic", "steps": 2, "prompts": 2, "num_generations": 4,
         "max_new_tokens": 16, "micro_batch_size": 4, "chat_template": False, "out": "bench/out/llm_quick.json"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def step_prompts(task, seed: int, step: int, n: int) -> list:
    """The train prompts rung.algos.grpo.train draws at `step` (one process): the same formula."""
    return task.prompts("train", n, ((seed * 1_000_003 + step) * 1_009) % 2**62)


def digest(prompts_by_step: list[list[str]]) -> str:
    return hashlib.sha256(json.dumps(prompts_by_step).encode()).hexdigest()[:16]


# -- children ------------------------------------------------------------------------------------

def child_prepare(s: dict) -> dict:
    from rung.llm.models import load_model

    load_model(s["model"])  # creates the cached conversion of a built-in model where it is missing
    return {}


def child_rung(s: dict) -> dict:
    import torch

    torch.set_num_threads(s["threads"])
    import transformers  # noqa: F401  (imported before the baseline RSS, as on TRL's side)

    import rung
    from rung.algos import grpo
    from rung.llm import config as llm_config
    from rung.logging import read_metrics
    from rung.run import Run

    rss_start = rss_now_mb()
    drawn: list[list[str]] = []
    marks: dict[str, float] = {}

    # Record the prompts rung trains on, to show that TRL got the same ones.
    def load_task(cfg):
        task = llm_config.load_task(cfg)
        prompts = task.prompts

        def recording(split, n, seed):
            out = prompts(split, n, seed)
            if split == "train":
                drawn.append([e.prompt for e in out])
            return out

        task.prompts = recording
        return task

    grpo.load_task = load_task
    # The loop ends where train() calls Run.close (after one held-out prompt is scored): read the
    # peak there, before the final checkpoint is written.
    close = Run.close

    def close_and_mark(self, *args, **kwargs):
        marks["peak_rss_loop_mb"], marks["threads"] = peak_rss_mb(), torch.get_num_threads()
        return close(self, *args, **kwargs)

    Run.close = close_and_mark

    run_dir = tempfile.mkdtemp(prefix="rung-bench-llm-")
    cfg = grpo.Config(model=s["model"], task=s["task"], seed=s["seed"], run_dir=run_dir, torch_threads=s["threads"],
                      total_steps=s["steps"], batch_size=s["prompts"], micro_batch_size=s["micro_batch_size"],
                      num_generations=s["num_generations"], max_new_tokens=s["max_new_tokens"],
                      learning_rate=s["learning_rate"], weight_decay=0.0, max_grad_norm=1.0, temperature=1.0, top_p=1.0,
                      chat_template=s["chat_template"], update_epochs=1, clip_low=0.2, clip_high=0.2, kl_coef=0.0,
                      loss_aggregation="token_mean", scale_rewards="std", dtype="float32", eval_every=0, eval_prompts=1,
                      checkpoint_every=10**9, log_every=1)
    grpo.train(cfg, force=True)
    rows = [r for r in read_metrics(run_dir) if "time/rollout" in r]
    walls = [r["wall"] for r in rows]
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    B = s["prompts"] * s["num_generations"]
    return {"framework": "rung", "version": rung.__version__, "walls": walls,
            "step_seconds": [b - a for a, b in zip([0.0, *walls], walls)],
            "rollout_seconds": [r["time/rollout"] for r in rows], "update_seconds": [r["time/update"] for r in rows],
            "response_tokens": [r["llm/tokens"] for r in rows],
            "response_length": [r["llm/response_length"] for r in rows],
            "reward_mean": [r["llm/reward_mean"] for r in rows], "samples": B * len(rows),
            "prompts_digest": digest(drawn[:s["steps"]]), "rss_start_mb": rss_start,
            "peak_rss_loop_mb": marks["peak_rss_loop_mb"], "peak_rss_exit_mb": peak_rss_mb(),
            "threads": marks["threads"]}


def child_trl(s: dict) -> dict:
    import torch

    torch.set_num_threads(s["threads"])
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rung.llm.config import parse_options
    from rung.llm.evaluate import prompt_texts
    from rung.llm.models import load_model
    from rung.llm.tasks import get_task

    rss_start = rss_now_mb()
    model, tokenizer = load_model(s["model"])
    model.train()
    task = get_task(s["task"], **parse_options(s.get("task_options", "")))
    P, G, mb = s["prompts"], s["num_generations"], s["micro_batch_size"]
    examples = [e for step in range(1, s["steps"] + 1) for e in step_prompts(task, s["seed"], step, P)]
    texts = prompt_texts(tokenizer, examples, s["chat_template"])
    # rung tokenizes prompts without special tokens; TRL with the tokenizer's defaults. Same ids
    # unless the tokenizer adds a BOS/EOS of its own.
    same_ids = tokenizer(texts[0])["input_ids"] == tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    dataset = datasets.Dataset.from_dict({"prompt": texts, "idx": list(range(len(texts)))})

    seen: list[list[str]] = []

    def task_reward(prompts, completions, idx, **kwargs) -> list[float]:
        firsts = [examples[i].prompt for i in idx[::G]]
        seen.append(firsts)
        return [float(task.reward(examples[i], c)[0]) for i, c in zip(idx, completions, strict=True)]

    rollout: list[float] = []

    class Trainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            rollout.append(time.perf_counter() - t)
            return out

    clock: dict = {"ends": [], "lengths": [], "rewards": []}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock["ends"].append(time.perf_counter() - clock["t0"])
            metrics = trainer._metrics["train"]
            clock["lengths"].append(metrics["completions/mean_length"][-1])
            clock["rewards"].append(metrics["reward"][-1])

        def on_train_end(self, args, state, control, **kwargs):
            clock["peak_rss_loop_mb"], clock["threads"] = peak_rss_mb(), torch.get_num_threads()

    out_dir = tempfile.mkdtemp(prefix="trl-bench-llm-")
    args = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, seed=s["seed"], max_steps=s["steps"],
        per_device_train_batch_size=mb, gradient_accumulation_steps=P * G // mb, steps_per_generation=P * G // mb,
        num_generations=G, max_completion_length=s["max_new_tokens"], num_iterations=1,
        learning_rate=s["learning_rate"], lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=1.0, temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, epsilon_high=0.2,
        loss_type="dapo", scale_rewards="group", mask_truncated_completions=False, gradient_checkpointing=False,
        disable_dropout=True, shuffle_dataset=False, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, reward_funcs=task_reward, args=args, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    ends = clock["ends"]
    steps = [b - a for a, b in zip([0.0, *ends], ends)]
    B = P * G
    return {"framework": "trl", "version": trl.__version__, "walls": ends, "step_seconds": steps,
            "rollout_seconds": rollout, "update_seconds": [t - r for t, r in zip(steps, rollout)],
            "response_tokens": [length * B for length in clock["lengths"]], "response_length": clock["lengths"],
            "reward_mean": clock["rewards"], "samples": B * len(ends), "prompts_digest": digest(seen),
            "prompt_ids_match_rung": same_ids, "rss_start_mb": rss_start, "peak_rss_loop_mb": clock["peak_rss_loop_mb"],
            "peak_rss_exit_mb": peak_rss_mb(), "threads": clock["threads"]}


def child(kind: str, settings: dict) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--child-settings", json.dumps(settings)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"the {kind} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


# -- the run -------------------------------------------------------------------------------------

def summarise(r: dict) -> dict:
    wall = r["walls"][-1]
    later = r["step_seconds"][1:] or r["step_seconds"]
    return {"wall": wall, "samples_per_s": r["samples"] / wall, "tokens_per_s": sum(r["response_tokens"]) / wall,
            "median_step_s": statistics.median(later), "first_step_s": r["step_seconds"][0],
            "rollout_s": statistics.median(r["rollout_seconds"][1:] or r["rollout_seconds"]),
            "update_s": statistics.median(r["update_seconds"][1:] or r["update_seconds"]),
            "mean_response_length": statistics.fmean(r["response_length"]),
            "peak_rss_mb": r["peak_rss_loop_mb"], "peak_rss_exit_mb": r["peak_rss_exit_mb"],
            "rss_start_mb": r["rss_start_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"policy for both sides (default {DEFAULTS['model']}; --quick: tiny-gpt)")
    p.add_argument("--task", help="rung task: prompts and reward (default arithmetic)")
    p.add_argument("--steps", type=int, help="optimizer steps per side (default 5; --quick: 2)")
    p.add_argument("--prompts", type=int, help="prompts per step (default 8; --quick: 2)")
    p.add_argument("--num-generations", type=int, help="completions per prompt (default 8; --quick: 4)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per completion at most (default 128; --quick: 16)")
    p.add_argument("--micro-batch-size", type=int,
                   help="sequences per forward/backward pass (default 16, rung's default; --quick: 4)")
    p.add_argument("--learning-rate", type=float, help="default 1e-5 (rung's default)")
    p.add_argument("--threads", type=int, help="torch threads in each child (default 2)")
    p.add_argument("--seed", type=int, help="default 1")
    p.add_argument("--chat-template", choices=["true", "false"],
                   help="wrap prompts in the tokenizer's chat template (default true; --quick: false)")
    p.add_argument("--out", help="JSON with the figures (default bench/out/llm.json; --quick: bench/out/llm_quick.json)")
    p.add_argument("--quick", action="store_true", help="tiny-gpt, 2 steps, tiny batch: checks that the script works")
    p.add_argument("--child", choices=["prepare", "rung", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--child-settings", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        fn = {"prepare": child_prepare, "rung": child_rung, "trl": child_trl}[a.child]
        print("RESULT " + json.dumps(fn(json.loads(a.child_settings))), flush=True)
        return

    s = {**DEFAULTS, **(QUICK if a.quick else {})}
    for k in DEFAULTS:
        v = getattr(a, k)
        if v is not None:
            s[k] = (v == "true") if k == "chat_template" else v
    B = s["prompts"] * s["num_generations"]
    if s["steps"] < 2 or s["num_generations"] < 2 or B % s["micro_batch_size"]:
        p.error("need --steps >= 2, --num-generations >= 2, and prompts * num_generations divisible by --micro-batch-size")

    import torch
    import transformers
    import trl

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {trl.__version__}, date {date.today()}")
    print(f"GRPO on {s['task']} with {s['model']}: {s['steps']} steps x {s['prompts']} prompts x {s['num_generations']} "
          f"completions ({B} a step), <= {s['max_new_tokens']} new tokens, micro-batch {s['micro_batch_size']}, "
          f"lr {s['learning_rate']:g}, chat template {s['chat_template']}, {s['threads']} torch threads, seed {s['seed']}",
          flush=True)
    child("prepare", s)
    rows = {}
    for fw in ("rung", "trl"):
        t = time.perf_counter()
        rows[fw] = child(fw, s)
        m = summarise(rows[fw])
        print(f"  {fw:>4}: {m['samples_per_s']:.2f} samples/s, {m['median_step_s']:.2f} s/step, peak RSS "
              f"{m['peak_rss_mb']:.0f} MiB ({time.perf_counter() - t:.0f} s with loading)", flush=True)
    med = {fw: summarise(r) for fw, r in rows.items()}

    print()
    print(f"| {'':<34} | {'TRL ' + rows['trl']['version']:>12} | {'rung':>12} |")
    print(f"|{'-' * 36}|{'-' * 14}|{'-' * 14}|")
    lines = [("samples/s (training loop)", "samples_per_s", "{:.2f}"),
             ("response tokens/s", "tokens_per_s", "{:.1f}"),
             ("s per optimizer step (median, 2..)", "median_step_s", "{:.2f}"),
             ("  of which generation + reward", "rollout_s", "{:.2f}"),
             ("  of which update", "update_s", "{:.2f}"),
             ("first step s", "first_step_s", "{:.2f}"),
             ("training loop s", "wall", "{:.1f}"),
             ("mean response length (tokens)", "mean_response_length", "{:.1f}"),
             ("peak RSS at loop end (MiB)", "peak_rss_mb", "{:.0f}"),
             ("peak RSS at exit (MiB)", "peak_rss_exit_mb", "{:.0f}"),
             ("RSS before loading the model (MiB)", "rss_start_mb", "{:.0f}")]
    for label, key, fmt in lines:
        print(f"| {label:<34} | {fmt.format(med['trl'][key]):>12} | {fmt.format(med['rung'][key]):>12} |")
    same_prompts = rows["rung"]["prompts_digest"] == rows["trl"]["prompts_digest"]
    print(f"same prompts, step by step: {same_prompts}; TRL's prompt token ids equal rung's: "
          f"{rows['trl']['prompt_ids_match_rung']}; torch threads rung/TRL: {rows['rung']['threads']}/{rows['trl']['threads']}")
    print("peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss in each child when its training loop ends")

    out = Path(s["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    ratios = {"samples_per_s_rung_over_trl": med["rung"]["samples_per_s"] / med["trl"]["samples_per_s"],
              "tokens_per_s_rung_over_trl": med["rung"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
              "step_s_trl_over_rung": med["trl"]["median_step_s"] / med["rung"]["median_step_s"],
              "peak_rss_rung_over_trl": med["rung"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"]}
    out.write_text(json.dumps({"settings": s, "date": str(date.today()), "machine": platform.machine(),
                               "cores": os.cpu_count(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "trl": trl.__version__,
                               "same_prompts": same_prompts, "summary": med, "ratios": ratios, "runs": rows}, indent=2))
    print(f"wrote {out}")
    print(f"ratio rung/TRL samples per second: {ratios['samples_per_s_rung_over_trl']:.2f}x "
          f"(response tokens per second: {ratios['tokens_per_s_rung_over_trl']:.2f}x)")
    print(f"ratio rung/TRL peak RSS: {ratios['peak_rss_rung_over_trl']:.2f}x")


if __name__ == "__main__":
    main()

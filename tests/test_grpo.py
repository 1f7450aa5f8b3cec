"""GRPO end to end on tiny-gpt: learning, micro-batch invariance, resume, config errors."""

import dataclasses
import json

import pytest
import torch

pytest.importorskip("transformers")

from rung.algos import grpo  # noqa: E402
from rung.cli import main  # noqa: E402
from rung.logging import read_metrics  # noqa: E402


def tiny_cfg(run_dir, **kw):
    base = dict(model="tiny-gpt", task="target_token", task_options="target=A", chat_template=False,
                max_new_tokens=4, eval_prompts=8, eval_every=0, learning_rate=3e-3, batch_size=8,
                num_generations=8, run_dir=str(run_dir))
    return grpo.Config(**{**base, **kw})


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_grpo_teaches_a_two_layer_gpt_to_say_the_target_token(tmp_path):
    # Calibrated over seeds 1-5: the mean training reward of the last 5 of 60 steps was 0.99-1.0
    # (from 0.0-0.02 at the start), about 6 s of training each on this 2-core machine.
    result = grpo.train(tiny_cfg(tmp_path / "run", total_steps=60))
    s = result.summary
    assert s["eval_accuracy_before"] == 0.0 and s["eval_accuracy_after"] == 1.0
    rewards = [r["llm/reward_mean"] for r in read_metrics(result.run_dir) if "llm/reward_mean" in r]
    assert len(rewards) == 60 and max(rewards[:3]) < 0.1
    assert sum(rewards[-5:]) / 5 >= 0.9
    assert (result.run_dir / "curve.png").exists()


@pytest.mark.parametrize("targets, adapted", [("all-linear", {"c_attn", "c_proj", "c_fc"}), ("c_attn", {"c_attn"})])
def test_lora_adapts_the_chosen_layers_and_nothing_else_moves(tmp_path, targets, adapted):
    cfg = tiny_cfg(tmp_path / "run", total_steps=2, lora_r=4, lora_targets=targets)
    model = grpo.make_agent(cfg)[0]
    names = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert names == adapted and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = weights(grpo.train(cfg).run_dir)
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all("lora_" in k for k in moved)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant"])
def test_micro_batch_size_does_not_change_the_update(tmp_path, aggregation):
    # Target "t": about one in ten of the untrained model's responses starts with it, so the first
    # step has rewards to learn from (a target it never says would leave every advantage 0).
    kw = dict(total_steps=1, loss_aggregation=aggregation, task_options="target=t")
    whole = grpo.train(tiny_cfg(tmp_path / "a", micro_batch_size=64, **kw))
    parts = grpo.train(tiny_cfg(tmp_path / "b", micro_batch_size=5, **kw))
    a, b = weights(whole.run_dir), weights(parts.run_dir)
    start = grpo.make_agent(tiny_cfg(tmp_path / "c"))[0].state_dict()
    moved = [k for k in a if not torch.equal(a[k], start[k])]
    assert moved, "the step changed no weight, so the comparison below would prove nothing"
    # The gradient itself (its norm is logged before clipping) agrees to float32 rounding. The
    # weights are compared to 1% of one step: Adam's first step is nearly lr * sign(gradient),
    # so a coordinate whose gradient is ~0 can flip on rounding alone.
    norm = [next(m["losses/grad_norm"] for m in read_metrics(r.run_dir) if "losses/grad_norm" in m) for r in (whole, parts)]
    assert norm[0] == pytest.approx(norm[1], rel=1e-5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0.01 * 3e-3)


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    full = grpo.train(tiny_cfg(tmp_path / "full", total_steps=4, checkpoint_every=2))
    cfg = tiny_cfg(tmp_path / "cut", total_steps=2, checkpoint_every=2)
    grpo.train(cfg)
    resumed = grpo.train(dataclasses.replace(cfg, total_steps=4), resume=True)
    a, b = weights(full.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["eval_accuracy_before"] == full.summary["eval_accuracy_before"]
    summary = json.loads((resumed.run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["task"] == "target_token"
    # The cut run's end-of-run evaluation at step 2 came after its last checkpoint: resuming
    # drops it, so the log reads as the uninterrupted run's, row for row.
    def shape(run_dir):
        return [(r["step"], sorted(r)) for r in read_metrics(run_dir)]

    assert shape(resumed.run_dir) == shape(full.run_dir)


def test_bfloat16_full_fine_tuning_resumes_from_its_float32_masters(tmp_path):
    kw = dict(dtype="bfloat16", learning_rate=1e-5, checkpoint_every=2)
    full = grpo.train(tiny_cfg(tmp_path / "full", total_steps=4, **kw))
    cfg = tiny_cfg(tmp_path / "cut", total_steps=2, **kw)
    grpo.train(cfg)
    resumed = grpo.train(dataclasses.replace(cfg, total_steps=4), resume=True)
    a, b = weights(full.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ck = torch.load(full.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    masters = ck["float32_master"]["weights"]
    assert all(m.dtype == torch.float32 and torch.equal(m.to(torch.bfloat16), ck["model"][n]) for n, m in masters.items())


@pytest.mark.parametrize("flags, message", [
    (["--num-generations", "1"], "--num-generations must be >= 2"),
    (["--temperature", "0"], "--temperature 0 samples greedily"),
    (["--task", "chess"], "unknown task 'chess'"),
    (["--task-options", "target"], "--task-options expects NAME=VALUE"),
    (["--loss-aggregation", "sum"], "--loss-aggregation expects one of token_mean, seq_mean, constant"),
    (["--advantage", "process"], "--advantage process needs a task that checks each step"),
    (["--max-sampling-rounds", "0"], "--max-sampling-rounds must be >= 1"),
    (["--lr-schedule", "step"], "--lr-schedule expects one of constant, linear, cosine"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--ema-decay", "1"], "--ema-decay 1.0 is outside [0, 1)"),
    (["--model", "/no/such/folder"], "/no/such/folder"),
])
def test_bad_input_is_one_line(tmp_path, capsys, flags, message):
    code = main(["train", "grpo", "--model", "tiny-gpt", "--total-steps", "1", "--run-dir", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_listed(capsys):
    assert main(["list"]) == 0
    assert "grpo" in capsys.readouterr().out


def test_step_tensors_find_the_token_where_each_step_ends():
    from types import SimpleNamespace

    from rung.llm.models import tiny_tokenizer

    tok = tiny_tokenizer()
    texts = ["12 + 3 = 15\n15 - 4 = 11\n#### 11", "#### 7"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows[0] = rows[0] + [tok.eos_token_id]  # a response that stopped; the second was cut off
    T = max(map(len, rows)) + 2
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
    steps = [[(11, 1.0), (23, 0.0), (len(texts[0]), 0.0)], [(len(texts[1]), 1.0)]]
    rewards, ends, real = grpo.step_tensors(tok, SimpleNamespace(response_ids=ids, response_mask=mask), steps)
    assert rewards.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]] and real.tolist() == [[True] * 3, [True, False, False]]
    for i, row in enumerate(steps):
        for j, (end, _) in enumerate(row[:-1]):
            k = int(ends[i, j])
            # The step's last character lies in token k: its prefix reaches it, the one before does not.
            assert len(tok.decode(rows[i][:k + 1])) >= end > len(tok.decode(rows[i][:k]))
    # The last step runs to the response's last token, the end-of-text token where there is one.
    assert ends[0, 2] == len(rows[0]) - 1 and ends[1, 0] == len(rows[1]) - 1


def test_process_supervision_runs_on_chain_sums(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", total_steps=2, task="chain_sum", advantage="process", max_new_tokens=12,
                   task_options="min_terms=2,max_terms=2,min_digits=1,max_digits=1,scorer=math", batch_size=2,
                   num_generations=4, eval_prompts=4)
    # An untrained tiny GPT writes no right line, so this checks the path end to end (steps
    # found, advantages shaped, metrics logged); the advantages' values are tested by hand in
    # test_llm_objectives.py.
    result = grpo.train(cfg)
    rows = [m for m in read_metrics(result.run_dir) if "llm/step_accuracy" in m]
    assert len(rows) == 2 and all(0.0 <= m["llm/step_accuracy"] <= 1.0 for m in rows)


@pytest.fixture
def scripted_batches(monkeypatch):
    """draw_batch over batches of 2 prompts x 4 responses whose rewards are scripted per attempt,
    the responses being tiny-gpt's own samples."""
    from collections import Counter

    from rung.llm.generation import generate
    from rung.llm.models import load_model

    model, tok = load_model("tiny-gpt")
    script = {0: [0, 0, 0, 0, 1, 0, 0, 0],  # group 0 all wrong, group 1 has a signal
              1: [1, 0, 1, 0, 1, 1, 1, 1],  # group 0 has a signal, group 1 all right
              2: [0, 1, 0, 0, 0, 0, 1, 0]}
    drawn = {}

    def fake_sample_step(model_, tok_, task, cfg, step, rank, G, gen, attempt=0):
        rollout = generate(model, tok, [f"prompt {attempt}"] * 4 + [f"other {attempt}!"] * 4, max_new_tokens=3 + attempt,
                           seed=attempt)
        drawn[attempt] = rollout
        rewards = torch.tensor(script.get(attempt, [0.0] * 8), dtype=torch.float32)
        return [None, None], rollout, rewards, Counter(ok=8)

    monkeypatch.setattr(grpo, "sample_step", fake_sample_step)
    from rung.llm.tasks import get_task

    def draw(**kw):
        cfg = tiny_cfg("unused", batch_size=2, num_generations=4, **kw)
        return grpo.draw_batch(model, tok, get_task("target_token", target="A"), cfg, 1, 0, torch.Generator(), "cpu")

    return draw, drawn, script


def test_dynamic_sampling_keeps_the_groups_with_a_signal_until_the_batch_is_full(scripted_batches):
    draw, drawn, script = scripted_batches
    rollout, advantages, metrics = draw(dynamic_sampling=True)
    assert set(drawn) == {0, 1}  # the second batch filled it: no third is drawn
    assert rollout.texts == drawn[0].texts[4:] + drawn[1].texts[:4]
    expected = grpo.group_advantages(torch.tensor(script[0][4:] + script[1][:4], dtype=torch.float32), 4)
    torch.testing.assert_close(advantages, expected)
    assert advantages.ne(0).any()
    assert metrics["llm/sampling_rounds"] == 2 and metrics["llm/kept_groups"] == 1.0
    assert metrics["llm/informative_groups"] == 0.5
    assert metrics["llm/reward_mean"] == pytest.approx((sum(script[0]) + sum(script[1])) / 16)


def test_dynamic_sampling_stops_at_its_cap_and_falls_back_to_the_first_batch(scripted_batches):
    draw, drawn, script = scripted_batches
    rollout, advantages, metrics = draw(dynamic_sampling=True, max_sampling_rounds=1)
    assert rollout.texts == drawn[0].texts[4:] and metrics["llm/kept_groups"] == 0.5
    script.update({0: [0] * 8, 1: [1] * 8, 2: [0] * 8, 3: [1] * 8})
    rollout, advantages, metrics = draw(dynamic_sampling=True)
    # Nothing to learn from in four batches: the step updates on its first, all advantages 0.
    assert rollout.texts == drawn[0].texts and advantages.eq(0).all()
    assert metrics["llm/sampling_rounds"] == 4 and metrics["llm/kept_groups"] == 0.0


def test_without_dynamic_sampling_the_batch_is_the_one_sampled(scripted_batches):
    draw, drawn, script = scripted_batches
    rollout, advantages, metrics = draw()
    assert set(drawn) == {0} and rollout is drawn[0] and advantages[:4].eq(0).all()
    assert metrics["llm/sampling_rounds"] == 1 and metrics["llm/informative_groups"] == 0.5
    assert "llm/kept_groups" not in metrics


def test_dynamic_sampling_runs_end_to_end_and_resumes(tmp_path):
    # Target "t" is said about one time in ten by the untrained model: most groups are all wrong.
    kw = dict(task_options="target=t", dynamic_sampling=True, max_sampling_rounds=3, checkpoint_every=2)
    full = grpo.train(tiny_cfg(tmp_path / "full", total_steps=4, **kw))
    rows = [m for m in read_metrics(full.run_dir) if "llm/sampling_rounds" in m]
    assert len(rows) == 4 and any(m["llm/sampling_rounds"] > 1 for m in rows)
    cfg = tiny_cfg(tmp_path / "cut", total_steps=2, **kw)
    grpo.train(cfg)
    resumed = grpo.train(dataclasses.replace(cfg, total_steps=4), resume=True)
    a, b = weights(full.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_linear_schedule_ends_on_the_last_steps_learning_rate(tmp_path):
    result = grpo.train(tiny_cfg(tmp_path / "run", total_steps=4, lr_schedule="linear", warmup_steps=1))
    state = torch.load(result.run_dir / "checkpoints" / "latest.pt", weights_only=False)["optimizer"]
    # Step 1 warms up to the peak, steps 2-4 decay over the 3 left: the last is a third of it.
    assert state["param_groups"][0]["lr"] == pytest.approx(3e-3 / 3)


def test_a_weight_averaged_run_scores_both_resumes_and_hands_on_the_average(tmp_path):
    from rung.llm.models import load_model

    kw = dict(ema_decay=0.5, checkpoint_every=2, eval_every=2, task_options="target=t")
    full = grpo.train(tiny_cfg(tmp_path / "full", total_steps=4, **kw))
    assert full.summary["eval_raw_accuracy_after"] is not None
    rows = [m for m in read_metrics(full.run_dir) if "eval/raw_accuracy" in m]
    assert len(rows) == 2  # step 2 and the end; step 0's average is the starting weights
    assert (full.run_dir / "eval_samples" / "step_000004_raw.jsonl").exists()
    ckpt = torch.load(full.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    average, raw = ckpt["weight_average"]["weights"], ckpt["model"]
    assert any(not torch.equal(average[k], raw[k]) for k in average)
    cfg = tiny_cfg(tmp_path / "cut", total_steps=2, **kw)
    grpo.train(cfg)
    resumed = torch.load(grpo.train(dataclasses.replace(cfg, total_steps=4), resume=True).run_dir
                         / "checkpoints" / "latest.pt", weights_only=False)
    assert all(torch.equal(average[k], resumed["weight_average"]["weights"][k]) for k in average)
    loaded = dict(load_model(str(full.run_dir))[0].named_parameters())
    assert all(torch.equal(loaded[k], average[k]) for k in average)


def test_rung_eval_scores_a_language_model_run_on_its_own_and_on_other_held_out_problems(tmp_path, capsys, monkeypatch):
    result = grpo.train(tiny_cfg(tmp_path / "run", total_steps=2, ema_decay=0.5))
    run = str(result.run_dir)
    from rung import checkpoint

    reads, load = [], checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda path, *a, **k: reads.append(path) or load(path, *a, **k))
    assert main(["eval", run]) == 0
    assert len(reads) == 1  # a language model's checkpoint can be gigabytes: read once
    own = json.loads((result.run_dir / "eval.json").read_text())
    # Seed 0 is the run's own held-out set: the figure the run reported at its end.
    assert own["accuracy"] == result.summary["eval_accuracy_after"] and own["weights"] == "average"
    assert main(["eval", run, "--weights", "raw", "--prompts", "4", "--prompt-seed", "1"]) == 0
    other = json.loads((result.run_dir / "eval.json").read_text())
    assert other["prompts"] == 4 and other["weights"] == "raw"
    assert (result.run_dir / "eval_samples" / "eval_seed1_raw.jsonl").read_text().count("\n") == 4
    assert "held-out accuracy" in capsys.readouterr().out
    assert main(["eval", run, "--video"]) == 2
    assert "is a language-model run; --video is for the other kind of run" in capsys.readouterr().err
    assert main(["eval", run, "--episodes", "3", "--seed", "1"]) == 2
    assert "--episodes, --seed are for the other kind of run" in capsys.readouterr().err
    assert main(["collect", "--policy", run, "-o", str(tmp_path / "demos.npz")]) == 2
    assert "is a language-model run, whose policy acts on text" in capsys.readouterr().err
    plain = grpo.train(tiny_cfg(tmp_path / "plain", total_steps=1))
    assert main(["eval", str(plain.run_dir)]) == 0  # no average kept: its weights are the raw ones
    assert json.loads((plain.run_dir / "eval.json").read_text())["weights"] == "raw"
    assert (plain.run_dir / "eval_samples" / "eval_seed0_raw.jsonl").exists()
    assert main(["eval", str(plain.run_dir), "--weights", "raw"]) == 2
    assert "kept no weight average" in capsys.readouterr().err


def test_rung_evals_prompt_seeds_draw_other_problems():
    pytest.importorskip("reasoning_gym")
    from rung.llm.evaluate import PROMPT_SEED_STRIDE
    from rung.llm.tasks import get_task

    task = get_task("chain_sum", min_digits=3, max_digits=3)
    own = {e.prompt for e in task.prompts("test", 32, 0)}
    assert not own & {e.prompt for e in task.prompts("test", 32, PROMPT_SEED_STRIDE)}
    # What the stride avoids: reasoning-gym's seed s + 1 gives seed s's problems shifted by one.
    assert len(own & {e.prompt for e in task.prompts("test", 32, 1)}) >= 30


def test_sampled_accuracy_and_pass_at_k_by_hand(monkeypatch):
    import types

    from rung.llm import evaluate, generation
    from rung.llm.tasks import TargetTokenTask

    # 3 problems x 4 samples: 2 right, 0 right, 4 right -> pass@4 2/3, sampled accuracy 6/12.
    texts = ["7", "x", "7 and", "no", "a", "b", "c", "d", "7", " 7", "7", "7."]
    seen = []

    def fake_grouped(model, tokenizer, prompts, k, **kw):
        seen.append((len(prompts), k, kw["temperature"], kw["seed"]))
        return types.SimpleNamespace(texts=texts[:len(prompts) * k])

    monkeypatch.setattr(generation, "generate_grouped", fake_grouped)
    task = TargetTokenTask("7")
    model = torch.nn.Linear(1, 1)
    out = evaluate.sampled_accuracy(model, None, task, task.prompts("test", 3, 0), samples=4, temperature=0.7,
                                    max_new_tokens=4, chat_template=False, seed=5)
    assert out == {"pass_at_k": pytest.approx(2 / 3), "sample_accuracy": 0.5}
    assert seen == [(3, 4, 0.7, 5)]


def test_rung_eval_samples_at_temperature_zero_agree_with_greedy(tmp_path, capsys):
    from rung.llm import evaluate

    result = grpo.train(tiny_cfg(tmp_path / "run", total_steps=1, task_options="target=t"))
    run = str(result.run_dir)
    # At temperature 0 (the library allows it, as this check; the command refuses it) every sample is the greedy answer.
    r = evaluate.evaluate_run_folder(result.run_dir, sample_count=3, temperature=0.0)
    assert r["accuracy"] > 0.5  # the greedy answer hits: a sampled one at temperature 1 mostly does not
    assert r["samples"] == 3 and r["pass_at_k"] == r["sample_accuracy"] == r["accuracy"]
    assert main(["eval", run, "--samples", "3", "--temperature", "0"]) == 2
    assert "--temperature 0 draws the greedy answer K times" in capsys.readouterr().err
    assert main(["eval", run, "--samples", "6", "--temperature", "1.0"]) == 0
    hot = json.loads((result.run_dir / "eval.json").read_text())
    assert hot["sample_accuracy"] < hot["accuracy"] and hot["sample_accuracy"] <= hot["pass_at_k"]
    assert "pass@6" in capsys.readouterr().out
    assert main(["eval", run, "--temperature", "1.0"]) == 2
    assert "--temperature is for --samples K" in capsys.readouterr().err


def test_progress_lines_show_the_training_reward_in_samples_per_second(tmp_path, monkeypatch, capsys):
    from rung.logging import logger as logger_module

    monkeypatch.setattr(logger_module, "PLAIN_EVERY_S", 0.0)
    grpo.train(tiny_cfg(tmp_path / "run", total_steps=2))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ") and "of 2" in line]
    assert lines and all(" reward " in line and line.endswith("samples/s") for line in lines), lines

"""SFT end to end on tiny-gpt: learning the target token, micro-batch invariance, --dataset
validation, passes over a dataset and resume, reference answers in the task's format."""

import dataclasses
import json

import pytest
import torch

pytest.importorskip("transformers")

from rung.algos import sft  # noqa: E402
from rung.cli import main  # noqa: E402
from rung.errors import UserError  # noqa: E402
from rung.llm.tasks import get_task  # noqa: E402
from rung.logging import read_metrics  # noqa: E402

# Responses of different lengths, so that micro-batches hold different numbers of tokens and a
# loss normalised per micro-batch would give a different gradient.
PAIRS = [("What is 3 + 4?", "Answer: 7"), ("Number:", "7"), ("2 * 6 =", "12."),
         ("the first step", "is to think about the question and then answer it"),
         ("yes or no?", "no"), ("sum of one and two", "the result is three")]


def tiny_cfg(run_dir, **kw):
    base = dict(model="tiny-gpt", task="target_token", task_options="target=A", chat_template=False,
                max_new_tokens=4, eval_prompts=8, eval_every=0, learning_rate=3e-3, batch_size=8,
                run_dir=str(run_dir))
    return sft.Config(**{**base, **kw})


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_sft_teaches_a_two_layer_gpt_to_say_the_target_token(tmp_path):
    # Seeds 1-5 ran identically (tiny-gpt's initialisation is fixed and the task has one prompt):
    # held-out accuracy 0.0 -> 1.0 and responses of 4 tokens -> 2 ("A", eos) after the first step;
    # the loss fell from 6.12 (about ln 512, the vocabulary) to 2.81 in 10 steps and 0.43 in 20.
    result = sft.train(tiny_cfg(tmp_path / "run", total_steps=10))
    s = result.summary
    assert s["eval_accuracy_before"] == 0.0 and s["eval_accuracy_after"] == 1.0
    rows = read_metrics(result.run_dir)
    # It learned to stop: the eos that ends every training response ends the greedy one too.
    assert [r["eval/response_length"] for r in rows if "eval/response_length" in r] == [4.0, 2.0]
    losses = [r["losses/train"] for r in rows if "losses/train" in r]
    assert len(losses) == 10 and losses[-1] < 0.6 * losses[0]
    assert (result.run_dir / "curve.png").exists()


def test_micro_batch_size_does_not_change_the_update(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS])
    kw = dict(total_steps=1, dataset=data, batch_size=6, max_new_tokens=16)
    whole = sft.train(tiny_cfg(tmp_path / "a", micro_batch_size=64, **kw))
    parts = sft.train(tiny_cfg(tmp_path / "b", micro_batch_size=4, **kw))
    a, b = weights(whole.run_dir), weights(parts.run_dir)
    start = sft.make_agent(tiny_cfg(tmp_path / "c"))[0].state_dict()
    assert [k for k in a if not torch.equal(a[k], start[k])], "the step changed no weight"
    rows = [next(m for m in read_metrics(r.run_dir) if "losses/grad_norm" in m) for r in (whole, parts)]
    # The loss and the gradient (its norm is logged before clipping) agree to float32 rounding;
    # the weights to 1% of one Adam step, as in test_grpo.
    assert rows[0]["losses/train"] == pytest.approx(rows[1]["losses/train"], rel=1e-5)
    assert rows[0]["losses/grad_norm"] == pytest.approx(rows[1]["losses/grad_norm"], rel=1e-5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0.01 * 3e-3)


def test_epochs_set_the_steps_and_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    # 6 pairs, 4 a step: passes end inside steps 2 and 3, and each pass has its own order.
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS])
    kw = dict(dataset=data, batch_size=4, max_new_tokens=16, checkpoint_every=2)
    full = sft.train(tiny_cfg(tmp_path / "full", epochs=2, **kw))
    assert full.summary["steps"] == 3 and full.summary["dataset_examples"] == 6
    epochs = [r["charts/epoch"] for r in read_metrics(full.run_dir) if "charts/epoch" in r]
    assert epochs == pytest.approx([4 / 6, 8 / 6, 2.0])
    cut = tiny_cfg(tmp_path / "cut", total_steps=2, **kw)
    sft.train(cut)
    resumed = sft.train(dataclasses.replace(cut, epochs=2), resume=True)
    a, b = weights(full.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["steps"] == 3
    assert resumed.summary["eval_accuracy_before"] == full.summary["eval_accuracy_before"]


def test_dataset_passes_cover_every_example_once_per_pass():
    cfg = tiny_cfg("unused", batch_size=4)
    pairs = [(f"p{i}", f"r{i}") for i in range(6)]
    seen = [e.prompt for step in (1, 2, 3) for e in sft._dataset_batch(pairs, cfg, step, 0, 1)[0]]
    assert sorted(seen[:6]) == sorted(seen[6:]) == [p for p, _ in pairs]
    assert seen[:6] != seen[6:]  # reshuffled between passes
    # Two processes split each step's 2 * batch_size between them, in the same stream.
    assert [e.prompt for r in (0, 1) for e in sft._dataset_batch(pairs, cfg, 1, r, 2)[0]] == seen[:8]


@pytest.mark.parametrize("lines, message", [
    (None, "does not exist"),
    ([], "holds no examples"),
    (['{"prompt": "a", "response": "b"}', "{not json"], "line 2 is not valid JSON"),
    (['["a", "b"]'], "line 1 is a JSON list, not an object"),
    (['{"prompt": "a", "response": "b"}', "", '{"prompt": "a"}'], 'line 3 needs a non-empty string "response" (missing)'),
    (['{"prompt": 3, "response": "b"}'], 'line 1 needs a non-empty string "prompt" (int 3)'),
    (['{"prompt": "a", "response": ""}'], 'line 1 needs a non-empty string "response"'),
    (b'{"prompt": "\xff"}', "is not UTF-8 text"),
])
def test_bad_dataset_is_one_line_naming_the_line(tmp_path, capsys, lines, message):
    path = tmp_path / "data.jsonl"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    elif lines is not None:
        write_jsonl(path, lines)
    code = main(["train", "sft", "--model", "tiny-gpt", "--total-steps", "1", "--run-dir", str(tmp_path / "r"),
                 "--dataset", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists(), "a bad dataset must fail before the run folder is made"


def test_a_pair_longer_than_the_models_positions_is_one_line(tmp_path, capsys):
    # tiny-gpt has 256 positions; the embedding lookup past them fails with a bare IndexError.
    path = tmp_path / "data.jsonl"
    write_jsonl(path, ['{"prompt": "%s", "response": "7"}' % ("1 + " * 200 + "1 =")])
    code = main(["train", "sft", "--model", "tiny-gpt", "--total-steps", "1", "--run-dir", str(tmp_path / "r"),
                 "--dataset", str(path), "--no-chat-template"])
    err = capsys.readouterr().err
    assert code == 2 and "more than the model's 256 positions" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "2"], "--epochs counts passes over --dataset"),
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--task", "sentiment"], "task 'sentiment' has no reference answers to imitate; pass --dataset"),
])
def test_bad_input_is_one_line(tmp_path, capsys, flags, message):
    code = main(["train", "sft", "--model", "tiny-gpt", "--total-steps", "1", "--run-dir", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("task, options", [("target_token", {"target": "7"}), ("arithmetic", {}), ("chain_sum", {})])
def test_reference_answers_are_written_as_the_task_grades_them(task, options):
    if task != "target_token":
        pytest.importorskip("reasoning_gym")
    t = get_task(task, **options)
    for example in t.prompts("train", 10, 3):
        assert t.reward(example, sft.reference_response(t, example))[0] == t.max_reward
    with pytest.raises(UserError, match="no reference answers"):
        sft.reference_response(t, dataclasses.replace(example, answer=None))


def test_listed(capsys):
    assert main(["list"]) == 0
    assert "sft" in capsys.readouterr().out


@pytest.mark.parametrize("lora_r", [0, 4])
def test_a_run_folder_is_the_model_of_the_next_run(tmp_path, lora_r):
    # The SFT -> GRPO hand-over: `--model RUN_DIR` is the run's trained policy (LoRA merged), so
    # the next run's held-out score before training is the first run's score after it.
    from rung.algos import grpo
    from rung.llm.models import load_model

    first = sft.train(tiny_cfg(tmp_path / "sft", total_steps=2, lora_r=lora_r, learning_rate=3e-2 if lora_r else 3e-3))
    assert first.summary["eval_accuracy_before"] == 0.0 and first.summary["eval_accuracy_after"] == 1.0
    model, _ = load_model(str(first.run_dir))
    assert not any("lora_" in name for name, _ in model.named_parameters())
    trained = sft.make_agent(tiny_cfg(tmp_path / "x", lora_r=lora_r))[0]
    trained.load_state_dict(weights(first.run_dir))
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=1e-5, atol=1e-5)

    cfg = grpo.Config(model=str(first.run_dir), task="target_token", task_options="target=A", chat_template=False,
                      max_new_tokens=4, eval_prompts=8, eval_every=0, total_steps=1, batch_size=2,
                      num_generations=2, run_dir=str(tmp_path / "grpo"))
    assert grpo.train(cfg).summary["eval_accuracy_before"] == 1.0


def test_a_run_folder_of_an_env_algorithm_is_not_a_model(tmp_path):
    from rung import checkpoint
    from rung.llm.models import load_model

    (tmp_path / "ppo" / "checkpoints").mkdir(parents=True)
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "algo": "ppo", "config": {"env": "CartPole-v1"}},
                           tmp_path / "ppo" / "checkpoints" / "latest.pt")
    with pytest.raises(UserError, match="is a ppo run on CartPole-v1, not a language-model run"):
        load_model(str(tmp_path / "ppo"))


def test_held_out_responses_are_written_beside_the_figures(tmp_path):
    import json

    result = sft.train(tiny_cfg(tmp_path / "run", total_steps=2, eval_every=1))
    files = sorted(p.name for p in (result.run_dir / "eval_samples").iterdir())
    assert files == ["step_000000.jsonl", "step_000001.jsonl", "step_000002.jsonl"]
    for name, key in (("step_000000.jsonl", "eval_accuracy_before"), ("step_000002.jsonl", "eval_accuracy_after")):
        rows = [json.loads(line) for line in (result.run_dir / "eval_samples" / name).read_text().splitlines()]
        assert len(rows) == 8 and set(rows[0]) == {"prompt", "answer", "response", "reward", "reason"}
        assert sum(r["reward"] == 1.0 for r in rows) / 8 == result.summary[key]
    assert rows[0]["response"].startswith("A") and rows[0]["reason"] == "ok"

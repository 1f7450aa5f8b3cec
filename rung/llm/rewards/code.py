"""Reward for code: run a completion against a HumanEval-style problem's unit tests in the sandbox.

The program is the problem's prompt, then the completion's code, then its `test` and
`check(entry_point)`, as in HumanEval's own harness. The prompt goes first in both cases a model
produces: a bare continuation of the function body completes the prompt's function, and a full
definition in a ```python fence redefines it (while keeping the prompt's imports).

Simplified: a single pass/fail per problem (no partial credit for some asserts), and no pass@k.
Not guarded against: code that games the asserts themselves, e.g. returning an object whose
`__eq__` is always True; a policy under RL can find such hacks, so read what it writes.
"""

from __future__ import annotations

import re

from rung.llm.sandbox import run_code

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ERROR_REASONS = {"AssertionError": "wrong", "SyntaxError": "syntax_error", "IndentationError": "syntax_error",
                  "TabError": "syntax_error"}


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The last ```python fenced block that defines `entry_point`; else an indented continuation
    of the prompt's function up to a bare ``` line; else the first fenced block (an unclosed fence
    runs to the end), else the whole completion."""
    blocks = _FENCE.findall(completion)
    defining = [b for b in blocks if entry_point and re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)]
    if defining:
        return defining[-1]
    if re.match(r"[ \t]+\S", completion):
        # An indented start continues the prompt's function body, and a bare fence line after it
        # closes what the model never opened ("    return x\n```\nThat is all."): the code is
        # what comes before that line.
        return re.split(r"^[ \t]*```[ \t]*$", completion, maxsplit=1, flags=re.MULTILINE)[0]
    return blocks[0] if blocks else completion


def code_reward(completion: str, problem: dict, *, timeout: float = 5.0) -> tuple[float, str]:
    """(1.0, "ok") if the completion passes the problem's tests, else (0.0, reason).

    `problem` has HumanEval's keys `prompt`, `test` and `entry_point`. Reasons: "no_code", "wrong"
    (a test assertion failed), "syntax_error", "error" (another exception), "exited_early" (the code
    called sys.exit() or os._exit() before the tests could fail, a known reward hack), or the sandbox's
    "timeout", "memory", "output_limit", "killed", "sandbox_error".
    """
    code = extract_code(completion, problem["entry_point"])
    if not code.strip():
        return 0.0, "no_code"
    # A bare completion continues the prompt exactly; fenced code starts on a line of its own.
    program = (problem["prompt"] + ("\n" if _FENCE.search(completion) else "") + code
               + f"\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n")
    result = run_code(program, timeout=timeout)
    if result.ok:
        return (1.0, "ok") if result.finished else (0.0, "exited_early")
    if result.reason == "error":
        last = result.stderr.strip().splitlines()[-1:] or [""]
        return 0.0, _ERROR_REASONS.get(last[0].split(":")[0].strip(), "error")
    return 0.0, result.reason

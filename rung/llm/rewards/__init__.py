"""Reward functions for language-model RL: plain callables from a completion to a float.

math: final-answer extraction and numeric comparison; code: unit tests run in the sandbox;
sentiment: VADER's compound score mapped to [0, 1].
"""

from rung.llm.rewards.code import code_reward, extract_code
from rung.llm.rewards.math import extract_answer, format_reward, math_reward, normalize_number
from rung.llm.rewards.sentiment import sentiment_reward

__all__ = ["code_reward", "extract_answer", "extract_code", "format_reward", "math_reward", "normalize_number",
           "sentiment_reward"]

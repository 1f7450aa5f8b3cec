"""Sentiment reward: how positive a text reads to VADER (Hutto and Gilbert 2014), in [0, 1].

VADER's compound score lies in [-1, 1]; the reward is (compound + 1) / 2, so 0 is as negative as it
gets, 0.5 neutral (and the empty text), 1 as positive. VADER is a lexicon with rules, not a learned
model: it is fast and needs no download, and it is easy to game (a list of positive words scores
near 1), which is what the RLHF-style sentiment recipe is meant to show.
"""

from __future__ import annotations

import functools

from rung.errors import missing_dependency


@functools.cache
def _analyser():
    # Reading the lexicon takes ~0.1 s, so build it once, and only when first asked.
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise missing_dependency("vaderSentiment", "llm") from None
    return SentimentIntensityAnalyzer()


def sentiment_reward(text: str) -> float:
    """(compound + 1) / 2 of VADER's polarity scores for `text`."""
    return (_analyser().polarity_scores(text)["compound"] + 1.0) / 2.0

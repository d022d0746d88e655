"""Whether a text still holds a gold answer: the normalisation of the lost-in-the-middle
evaluation (SQuAD's: lower case, no punctuation, no articles, single spaces), then a substring
test. The NQ converter uses it to keep answer-bearing passages out of the distractors, and
``switchyard eval compress`` to score retention, so both sides agree on what "contains" means."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    norm = f" {normalize(text)} "
    return any(a and f" {a} " in norm for a in (normalize(x) for x in answers))

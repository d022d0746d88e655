"""What the learned models see: MiniLM embeddings of the prompt (the pre-router), and for a
cascade's judge the cheap model's answer: its shape, its arithmetic, its log-probabilities.

Looking at RouteLLM's GSM8K table first (1,319 problems, Mixtral-8x7B's answers): a wrong
answer is far more often one without a ``#### N`` final line (100 of the 130 answers that
lack it are wrong, against 377 of 1,189 that have it), one whose final answer is not a bare
integer ("#### 2.67", "#### 90 minutes or 1 hour and 30 minutes"), one whose own worked
arithmetic is wrong (``<<288/60=4.8>>``, ``3.75 + 4.8 = 8.55`` mixing units), or one that
rambles or breaks off. ``answer_features`` measures exactly those, on any answer (the
markers it looks for are GSM8K's and the common "the answer is ..." forms).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
MAX_TEXT_CHARS = 8000  # what the embedder reads of a prompt (MiniLM truncates at 256 tokens)
ROUTE_CHARS = 500  # what the pre-router embeds: a prompt's last characters (about 128 tokens)

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_FINAL = re.compile(r"(?:####|answer is|Answer:|\\boxed\{)\s*(.*)", re.IGNORECASE)
_NUMBER = re.compile(_NUM)
_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_EQ = re.compile(rf"({_NUM}(?:\s*[-+*/x×÷]\s*{_NUM})+)\s*=\s*({_NUM})")
_OPS: dict[type, Callable[..., float]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos}


def _num(text: str) -> float | None:
    try:
        return float(text.replace("$", "").replace(",", ""))
    except ValueError:
        return None


def _eval(expr: str) -> float | None:
    """Arithmetic only (numbers, + - * / ** and parentheses); None for anything else."""
    expr = expr.replace("×", "*").replace("÷", "/").replace("x", "*").replace("$", "")
    expr = expr.replace(",", "").replace("^", "**")
    if len(expr) > 200:
        return None
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return None

    def ev(n: ast.AST) -> float:
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float):
            return float(n.value)
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            left, right = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and abs(right) > 10:
                raise ValueError("power too large")
            return float(_OPS[type(n.op)](left, right))
        if isinstance(n, ast.UnaryOp) and type(n.op) in _OPS:
            return float(_OPS[type(n.op)](ev(n.operand)))
        raise ValueError("not arithmetic")

    try:
        return ev(node)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.01, 0.005 * abs(a))


def arithmetic(answer: str) -> tuple[int, int]:
    """(worked calculations found, of which wrong): ``<<a*b=c>>`` annotations and
    ``a op b = c`` in the text."""
    checks = [(e, v) for e, v in _CALC.findall(answer)] + _EQ.findall(answer)
    found = wrong = 0
    for expr, value in checks:
        got, want = _eval(expr), _num(value.strip())
        if got is None or want is None:
            continue
        found += 1
        wrong += not _close(got, want)
    return found, wrong


ANSWER_FEATURES = (
    "has_final", "final_is_number", "final_is_integer", "final_words_after",
    "final_matches_last_number", "final_in_prompt", "final_negative", "calc_found",
    "calc_wrong", "any_calc_wrong", "log_chars", "lines", "repeated_lines", "numbers",
    "text_after_final", "code_or_traceback",
)


def answer_features(prompt: str, answer: str) -> F32:
    """The answer's shape and arithmetic, ``len(ANSWER_FEATURES)`` floats."""
    m = None
    for m in _FINAL.finditer(answer):
        pass
    final = m.group(1).strip() if m else ""
    first = _NUMBER.search(final)
    value = _num(first.group()) if first else None
    words_after = len(final[first.end():].split()) if first else len(final.split())
    nums = [v for v in (_num(t) for t in _NUMBER.findall(answer[: m.start()] if m else answer))
            if v is not None]
    prompt_nums = {v for v in (_num(t) for t in _NUMBER.findall(prompt)) if v is not None}
    found, wrong = arithmetic(answer)
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip()]
    tail = answer[m.end():].strip() if m else ""
    return np.array([
        m is not None,
        value is not None,
        value is not None and float(value).is_integer(),
        min(words_after, 20) / 20.0,
        value is not None and bool(nums) and _close(nums[-1], value),
        value is not None and value in prompt_nums,
        value is not None and value < 0,
        min(found, 20) / 20.0,
        min(wrong, 5) / 5.0,
        wrong > 0,
        math.log1p(len(answer)) / 10.0,
        min(len(lines), 40) / 40.0,
        1.0 - len(set(lines)) / len(lines) if lines else 0.0,
        min(len(nums), 60) / 60.0,
        min(len(tail), 200) / 200.0,
        "Traceback" in answer or "```" in answer,
    ], dtype=np.float32)


LOGPROB_FEATURES = ("has_logprobs", "lp_mean", "lp_min", "lp_p10", "lp_last_mean")


def logprob_features(logprobs: Sequence[float] | None) -> F32:
    """Statistics of the answer's token log-probabilities (zeros when there are none)."""
    if not logprobs:
        return np.zeros(len(LOGPROB_FEATURES), dtype=np.float32)
    lp = np.clip(np.asarray(logprobs, dtype=np.float64), -30.0, 0.0)
    return np.array([1.0, lp.mean() / 5.0, lp.min() / 30.0, np.percentile(lp, 10) / 10.0,
                     lp[-10:].mean() / 5.0], dtype=np.float32)


def route_text(text: str) -> str:
    """What the pre-router embeds, in training and in the policy alike: the prompt's last
    ``ROUTE_CHARS`` characters (the question and its choices; the last user turn of a
    chat), which keeps the one forward pass on the request path short."""
    return text[-ROUTE_CHARS:]


def judge_text(prompt: str, answer: str) -> str:
    """What the judge's embedding reads: the question's start and the answer's end (where
    the final answer is), within MiniLM's 256 tokens."""
    return f"{prompt[:600]}\n\n{answer[-600:]}"

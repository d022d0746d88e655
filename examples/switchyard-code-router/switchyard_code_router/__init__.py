"""Example routing plugin: send prompts with code to the GPU backend.

Two hooks, both called once at start-up with a ``register`` callback:

- ``switchyard_register_plan_editors``: ``code_to_gpu(request, candidates, plan)`` runs
  after the route's policy on every request; it returns a new Plan (GPU backends first)
  or None to leave the plan as it is. Like a policy, it does no I/O.
- ``switchyard_register_policies``: ``cheapest_fast`` is a whole policy in a few lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway import (
    Candidate,
    Constraints,
    Plan,
    PredictOptions,
    RegisterPlanEditor,
    RegisterPolicy,
    RequestFeatures,
    evaluate,
    hookimpl,
)

# Linear time on any input: no unbounded quantifier is followed by another that can match the
# same characters (``\w+\(.*\)`` was quadratic on a long run of letters and froze the
# gateway's event loop on a 60 KB prompt), and ``[ \t]`` instead of ``\s`` keeps a match
# on one line.
_CODE = re.compile(
    r"```|^[ \t]*(?:def|class|import|from|#include|public|fn|func|SELECT)\b|[;{}][ \t]*$|=>"
    r"|\b\w{1,64}\([^()\n]{0,256}\)[ \t]*[:{]",
    re.MULTILINE,
)


def has_code(text: str) -> bool:
    return bool(_CODE.search(text))


def is_gpu(c: Candidate) -> bool:
    return c.plugin == "vllm" or "gpu" in c.name.lower()


def code_to_gpu(request: RequestFeatures, candidates: Sequence[Candidate], plan: Plan) -> Plan | None:
    if not has_code(request.text):
        return None
    gpu = {c.name for c in candidates if is_gpu(c)}
    first = [n for n in plan.order if n in gpu]
    if not first or plan.order[0] in gpu:
        return None
    order = first + [n for n in plan.order if n not in gpu]
    return Plan(order, f"code in prompt: GPU backend first (was: {plan.reason})", plan.policy,
                plan.predictions, plan.rejected)


class CheapestFast:
    """The cheapest backend predicted to answer within ``slack`` x the fastest one."""

    name = "cheapest_fast"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.slack = float(options.get("slack", 1.5))
        self.opts = PredictOptions.from_options(options, accept={"slack"}, policy=self.name)

    def plan(
        self, request: RequestFeatures, candidates: Sequence[Candidate], constraints: Constraints
    ) -> Plan:
        fits, preds, rejected = evaluate(request, candidates, constraints, self.opts)
        if not fits:
            return Plan([], "nothing fits", self.name, preds, rejected)
        fastest = min(p.ttft_s for _, p in fits)
        fast = sorted((p.cost_usd, p.ttft_s, c.name) for c, p in fits if p.ttft_s <= fastest * self.slack)
        rest = sorted((p.ttft_s, c.name) for c, p in fits if p.ttft_s > fastest * self.slack)
        order = [n for *_, n in fast] + [n for _, n in rest]
        return Plan(order, f"cheapest within {self.slack}x of the fastest", self.name, preds, rejected)


@hookimpl
def switchyard_register_plan_editors(register: RegisterPlanEditor) -> None:
    register("code_to_gpu", code_to_gpu)


@hookimpl
def switchyard_register_policies(register: RegisterPolicy) -> None:
    register("cheapest_fast", CheapestFast)

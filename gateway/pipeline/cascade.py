"""Cascades (docs/cascades.md): a plan's ``cascade`` stages, cheapest first, each one
``Executor.run`` (reserved, called, settled, recorded: its own ledger row under the
request's id), until the route's judge accepts an answer; the last stage is not judged.

A stage that fails before any stage answered escalates to the next; one that fails (or
that the team's budget cannot hold) after an answer leaves the client that answer, or,
for a budget with ``on_budget: error``, a 429 ``insufficient_quota``. A streaming request holds each judged
stage (a whole, non-streaming call), then replays the accepted answer as the chunks of a
stream; the last stage, or with ``stream_first_unjudged`` the first, is streamed live.
Each row's ``decision["cascade"]`` says what its step did (the fields: docs/cascades.md).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

from gateway.accounting import UsageRecord
from gateway.errors import BudgetExceeded, SwitchyardError
from gateway.interfaces import Judge, Verdict
from gateway.pipeline.attempt import Executor, call
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.relay import Relay

log = logging.getLogger("switchyard.pipeline")

LEARN_CHARS = 2000  # of the prompt, in each row's decision, with ``cascade.learn``


@dataclasses.dataclass(slots=True)
class Step:
    n: int
    backend: str
    record: UsageRecord
    outcome: str = ""  # accepted | rejected | answered | unjudged | an error code
    answer: dict[str, Any] | None = None
    score: float | None = None
    pending: bool = False  # answered, its record not yet emitted (``Run.finish`` does)
    live: bool = False  # streamed: its record is written when the stream ends


class Run:
    """One request's cascade."""

    def __init__(self, ex: Executor, x: Exchange) -> None:
        self.ex, self.x = ex, x
        self.spec = x.target.cascade  # None: a policy's cascade; no judge, every stage runs
        self.judge: Judge | None = self.spec.judge if self.spec is not None else None
        self.stages = x.plan.cascade
        self.base = dataclasses.replace(x.record)  # the request's record before any call
        self.steps: list[Step] = []
        self.answered: Step | None = None
        self.live = False  # a streaming request: a held answer's first token waits for it all
        self._errors: dict[int, SwitchyardError] = {}  # a failed step's, by step

    async def complete(self) -> dict[str, Any]:
        """The answer the client gets (its record becomes ``x.record``)."""
        try:
            await self._run(live=False)
        finally:
            self.finish()
        assert self.answered is not None and self.answered.answer is not None
        return self.answered.answer

    async def stream(self) -> tuple[dict[str, Any] | None, Relay | None]:
        """A held answer to replay, or the live stream of the stage that answers."""
        self.live = True
        try:
            relay = await self._run(live=True)
        finally:
            self.finish()
        if relay is None:
            assert self.answered is not None and self.answered.answer is not None
            return self.answered.answer, None
        return None, relay

    async def _run(self, live: bool) -> Relay | None:
        """Call the stages until one answers for good; with ``live``, the stage that is not
        judged is opened as a stream and its relay returned."""
        last_n = len(self.stages)
        for n, name in enumerate(self.stages, 1):
            unjudged = (live and n == 1 and self.spec is not None
                        and self.spec.stream_first_unjudged)
            if live and (n == last_n or unjudged):
                step, relay = await self._live(n, name, unjudged)
                if relay is not None:
                    self.answered = step
                    return relay
            else:
                step = await self._held(n, name, judged=n < last_n and self.judge is not None)
            if step.outcome in ("accepted", "answered"):
                self.answered = step
                return None
            if step.answer is None and self._stop_after_failure(step, n == last_n):
                return None
        self.answered = self._latest_answer()  # every stage ran: the last answer stands
        return None

    def _stop_after_failure(self, step: Step, last: bool) -> bool:
        """A stage failed (``step.error``): stop with an earlier answer, or escalate
        (True: stop). Raises when the client gets the error."""
        err = self._errors.pop(step.n)
        earlier = self._latest_answer()
        if earlier is None:
            if err.retryable and not last:
                return False
            raise err
        if _over_budget(err) and self.spec is not None and self.spec.on_budget == "error":
            raise BudgetExceeded(
                f"The cascade of '{self.spec.route}' needs its stage '{step.backend}': the "
                f"judge did not accept the answer of '{earlier.backend}' (score "
                f"{_fmt(earlier.score)}). {err.message}", param=err.param, code=err.code,
                headers=dict(err.headers))
        self.answered = earlier
        return True

    def _latest_answer(self) -> Step | None:
        return next((s for s in reversed(self.steps) if s.answer is not None), None)

    # ---- one stage -------------------------------------------------------------------

    def _step(self, n: int, name: str) -> Step:
        """The step's record (the request's own for the first), its ``decision`` filled in
        before the call: a failed call's record is written as it fails."""
        rec = self.x.record if n == 1 else dataclasses.replace(self.base, started_at=time.time())
        fields: dict[str, Any] = {
            "step": n, "steps": len(self.stages),
            "route": self.spec.route if self.spec is not None else self.x.target.name,
            "backend": name, "judge": None, "score": None, "threshold": None,
            "accepted": None, "answered": None}
        if self.spec is not None and self.spec.learn:
            fields["prompt"] = self.x.features.text[:LEARN_CHARS]
        rec.decision = {**(self.base.decision or {}), "cascade": fields}
        rec.backend = name  # the stage's row names its backend, even if it never answers
        step = Step(n, name, rec)
        self.steps.append(step)
        return step

    async def _held(self, n: int, name: str, judged: bool) -> Step:
        """A whole (non-streaming) call, judged unless it is the last stage."""
        step = self._step(n, name)
        body, added = self._body(judged)
        try:
            a, result = await self.ex.run(self.x, functools.partial(call, body=body),
                                          step.record, (name,))
        except SwitchyardError as e:
            step.outcome, self._errors[n] = e.code, e
            return step
        await a.succeeded(result.usage, ttft_s=None, emit=False)
        step.answer, step.pending = result.body, True
        if judged:
            await self._judge(step)
        else:
            step.outcome = "answered" if n == len(self.stages) else "unjudged"
        if added:  # the client did not ask for them
            for choice in result.body.get("choices") or ():
                choice["logprobs"] = None
        return step

    async def _live(self, n: int, name: str, unjudged: bool) -> tuple[Step, Relay | None]:
        step = self._step(n, name)
        try:
            a, relay = await self.ex.run(self.x, Relay.open, step.record, (name,))
        except SwitchyardError as e:
            step.outcome, self._errors[n] = e.code, e
            return step, None
        step.record.backend, step.record.model = a.backend.name, a.backend.model
        step.outcome, step.live = ("unjudged" if unjudged else "answered"), True
        return step, relay

    def _body(self, judged: bool) -> tuple[dict[str, Any] | None, bool]:
        """The body of a held call (None: the forwarded one) and whether logprobs were
        added for the judge."""
        fwd, body = self.x.forwarded, None
        if self.x.streaming:
            body = {k: v for k, v in fwd.items() if k not in ("stream", "stream_options")}
        chat = self.x.endpoint == "chat"
        asked = bool(fwd.get("logprobs")) if chat else fwd.get("logprobs") is not None
        if not (judged and self.judge is not None and self.judge.logprobs) or asked:
            return body, False
        # top_logprobs 0: the sampled tokens only (and llama-cpp-python, in-process or as a
        # server, returns no chat logprobs without it)
        extra = {"logprobs": True, "top_logprobs": 0} if chat else {"logprobs": 0}
        return {**(body or fwd), **extra}, True

    async def _judge(self, step: Step) -> None:
        assert self.judge is not None and self.spec is not None and step.answer is not None
        verdict: Verdict | None = None
        try:
            verdict = await self.judge.verdict(self.x.features, step.answer, step.n)
        except Exception:  # a broken judge escalates: a stronger answer, never a 500
            log.exception("judge %s failed on request %s", self.spec.judge_name,
                          self.x.ctx.request_id)
        c = _fields(step.record)
        c["judge"] = self.spec.judge_name
        if verdict is None:
            step.outcome = "judge_error"
            return
        step.score = verdict.score
        c.update(score=verdict.score, threshold=verdict.threshold, accepted=verdict.accept)
        step.outcome = "accepted" if verdict.accept else "rejected"

    # ---- records ---------------------------------------------------------------------

    def finish(self) -> None:
        """Every answered step's record, written now that the answering step is known;
        ``x.record`` becomes the answering one's, with the chain tried (``tried``)."""
        ans = self.answered
        tried = [{"step": s.n, "backend": s.backend, "outcome": s.outcome, "score": s.score,
                  "status": s.record.status,
                  "cost_usd": None if s.live else s.record.cost_usd}
                 for s in self.steps]
        for s in self.steps:
            if not s.pending and s is not ans:
                continue  # written when it failed (or by its stream, when it ends)
            c = _fields(s.record)
            c["answered"] = ans.n if ans is not None else None
            if s is ans:
                c["tried"] = tried
                if self.live and s.pending:  # replayed: its first token came at the end
                    s.record.ttft_ms = s.record.latency_ms
            if s.pending:
                s.pending = False
                self.ex.accounts.emit(s.record)
        if ans is not None:
            self.x.record = ans.record


def _fields(rec: UsageRecord) -> dict[str, Any]:
    assert rec.decision is not None
    fields: dict[str, Any] = rec.decision["cascade"]
    return fields


def _over_budget(err: SwitchyardError) -> bool:
    """The team's budget cannot hold the stage: spent, or the stage alone costs more than
    the whole budget may at worst (``request_exceeds_budget``, a 400 outside a cascade)."""
    return isinstance(err, BudgetExceeded) or err.code == "request_exceeds_budget"


def _fmt(score: float | None) -> str:
    return "none" if score is None else f"{score:.3f}"

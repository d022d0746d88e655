"""The active health check leaves a backend alone while calls to it are in flight: they
watch it already, and a check can harm them (llama-cpp-python's server ends a running
stream early when another request, a check included, arrives)."""

from __future__ import annotations

from gateway.assembly import _probe
from gateway.telemetry import Tracker


class Backend:
    def __init__(self) -> None:
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        raise ConnectionError("down")


async def test_a_backend_with_calls_in_flight_is_not_probed() -> None:
    b, t = Backend(), Tracker()
    token = t.started()
    for _ in range(3):
        await _probe("b", b, t, timeout_s=1.0)  # type: ignore[arg-type]
    assert b.probes == 0 and t.last_probe_ok is None
    t.finished(token)
    for _ in range(2):
        await _probe("b", b, t, timeout_s=1.0)  # type: ignore[arg-type]
    assert b.probes == 2 and t.last_probe_ok is False  # idle again: checked, and found down

"""``latency``: the lowest predicted time to first token (or total time, with
``switchyard.latency_target: total``).

A corner case of ``weighted`` (weight 1 on latency); the same options apply.
"""

from __future__ import annotations

from gateway import RegisterPolicy, hookimpl
from policies.weighted import Weighted


@hookimpl(trylast=True)
def switchyard_register_policies(register: RegisterPolicy) -> None:
    register("latency", lambda options: Weighted("latency", {"latency": 1.0}, options))

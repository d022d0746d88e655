"""``cost``: the cheapest backend expected to meet the request's constraints.

A corner case of ``weighted`` (weight 1 on cost); the same options apply.
"""

from __future__ import annotations

from gateway import RegisterPolicy, hookimpl
from policies.weighted import Weighted


@hookimpl(trylast=True)
def switchyard_register_policies(register: RegisterPolicy) -> None:
    register("cost", lambda options: Weighted("cost", {"cost": 1.0}, options))

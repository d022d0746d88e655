"""``energy``: the fewest predicted joules (grams of CO2 with ``co2: true`` or the
request's ``include_co2``).

A corner case of ``weighted`` (weight 1 on energy); the same options apply.
"""

from __future__ import annotations

from gateway import RegisterPolicy, hookimpl
from policies.weighted import Weighted


@hookimpl(trylast=True)
def switchyard_register_policies(register: RegisterPolicy) -> None:
    register("energy", lambda options: Weighted("energy", {"energy": 1.0}, options))

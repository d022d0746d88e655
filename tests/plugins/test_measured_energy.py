"""Measured energy through the whole gateway: a backend with ``energy.measure: rapl`` is
billed the joules its RAPL counters moved while it served the request (split with the other
requests in flight), not its profile. The counters are files in RAPL's sysfs format that a
thread advances at a known power, as the kernel does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.harness import gateway, sdk, upstream_server
from fakes.openai_upstream import RecordingUpstream

WATTS = 500.0  # what the fake package draws
DELAY_S = 0.3  # how long the upstream takes per request


@pytest.fixture
def rapl(tmp_path: Path) -> Iterator[Path]:
    domain = tmp_path / "rapl" / "intel-rapl:0"
    domain.mkdir(parents=True)
    (domain / "max_energy_range_uj").write_text("262143328850\n")
    counter = domain / "energy_uj"
    counter.write_text("0\n")
    stop = threading.Event()

    def advance() -> None:
        uj, step_s = 0, 0.005
        while not stop.wait(step_s):
            uj += int(WATTS * step_s * 1e6)
            tmp = counter.with_suffix(".tmp")
            tmp.write_text(f"{uj}\n")
            tmp.replace(counter)  # atomic, like a sysfs read that never sees half a number

    t = threading.Thread(target=advance, daemon=True)
    t.start()
    yield tmp_path / "rapl" / "intel-rapl:[0-9]*"
    stop.set()
    t.join()


def test_a_request_is_billed_the_energy_its_counters_measured(tmp_path: Path, rapl: Path) -> None:
    rec = RecordingUpstream()
    rec.behave("slow", delay_s=DELAY_S)
    with upstream_server(rec.app) as up:
        cfg: dict[str, Any] = {
            "name": "metered", "plugin": "openai_compatible", "base_url": up.url + "/v1",
            "model": "m", "energy": {"measure": "rapl", "rapl_path": str(rapl),
                                     "watts_busy": 1.0, "grid_g_per_kwh": 360.0},
        }
        with gateway(tmp_path, cfg) as gw, sdk(gw.url) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="metered", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            joules = float(raw.headers["x-switchyard-energy-joules"])
            co2 = float(raw.headers["x-switchyard-co2-grams"])
            rid = raw.headers["x-switchyard-request-id"]
            ledger = gw.app.state.ledger
    # the profile (1 W) would say 0.3 J; the counters moved ~500 W x 0.3 s = ~150 J
    assert WATTS * DELAY_S * 0.6 < joules < WATTS * DELAY_S * 3
    assert co2 == pytest.approx(joules / 3.6e6 * 360.0, rel=1e-3)
    rows = ledger.query("SELECT energy_source, energy_j FROM requests WHERE request_id = ?", (rid,))
    assert rows and rows[0]["energy_source"] == "rapl"
    assert rows[0]["energy_j"] == pytest.approx(joules, abs=1e-3)

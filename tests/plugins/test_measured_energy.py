"""Measured energy through the whole gateway: a backend with ``energy.measure: rapl`` (or
``nvml``) is billed the joules its device's counter moved while it served the request
(split with the other requests in flight on that device, whichever backend they are for),
not its profile. The RAPL counters are files in RAPL's sysfs format that a thread advances
by the wall time elapsed at a known power, as the kernel does; NVML is the real GPU's."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.harness import gateway, sdk, upstream_server
from fakes.openai_upstream import RecordingUpstream
from starlette.requests import Request
from starlette.responses import Response

WATTS = 500.0  # what the fake package draws
DELAY_S = 0.3  # how long the upstream takes per request


@dataclass
class FakeRapl:
    glob: str  # what ``energy.rapl_path`` is set to
    counter: Path

    def joules(self) -> float:
        return int(self.counter.read_text()) / 1e6


@pytest.fixture
def rapl(tmp_path: Path) -> Iterator[FakeRapl]:
    domain = tmp_path / "rapl" / "intel-rapl:0"
    domain.mkdir(parents=True)
    (domain / "max_energy_range_uj").write_text("262143328850\n")
    counter = domain / "energy_uj"
    counter.write_text("0\n")
    stop = threading.Event()

    def advance() -> None:
        t0 = time.monotonic()
        while not stop.wait(0.005):
            # by the time elapsed, not per tick: a starved thread catches up, as hardware does
            uj = int(WATTS * (time.monotonic() - t0) * 1e6)
            tmp = counter.with_suffix(".tmp")
            tmp.write_text(f"{uj}\n")
            tmp.replace(counter)  # atomic, like a sysfs read that never sees half a number

    t = threading.Thread(target=advance, daemon=True)
    t.start()
    yield FakeRapl(str(tmp_path / "rapl" / "intel-rapl:[0-9]*"), counter)
    stop.set()
    t.join()


class Rendezvous(RecordingUpstream):
    """Holds each chat request until ``n`` have arrived, then answers after ``delay_s``: the
    requests are certain to overlap by at least that long."""

    def __init__(self, n: int, delay_s: float) -> None:
        super().__init__("m")
        self.n, self.delay_s, self.arrived = n, delay_s, 0
        self._all_in: asyncio.Event | None = None

    async def _chat(self, request: Request) -> Response:
        if self._all_in is None:
            self._all_in = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.n:
            self._all_in.set()
        await asyncio.wait_for(self._all_in.wait(), 60)
        await asyncio.sleep(self.delay_s)
        return await super()._chat(request)


def _concurrently(url: str, models: list[str]) -> list[tuple[float, str]]:
    """One request per model, all at once: (billed joules, request id) for each."""
    def one(model: str) -> tuple[float, str]:
        with sdk(url) as c:
            raw = c.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        return float(raw.headers["x-switchyard-energy-joules"]), raw.headers[
            "x-switchyard-request-id"]

    with cf.ThreadPoolExecutor(len(models)) as ex:
        return list(ex.map(one, models))


def _sources(ledger: Any, rids: list[str], timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["request_id"]: r["energy_source"] for r in ledger.query(
            "SELECT request_id, energy_source FROM requests")}
        if all(rid in rows for rid in rids) or time.monotonic() > deadline:
            return [rows.get(rid, "missing") for rid in rids]
        time.sleep(0.05)


def _shared_device_check(tmp_path: Path, energy: dict[str, Any], read: Callable[[], float],
                         delay_s: float) -> tuple[list[float], float, list[str]]:
    """Two backends measuring one device serve one request each, at the same time: what
    each was billed, what the device's counter moved meanwhile, and the ledger's sources."""
    up = Rendezvous(2, delay_s)
    with upstream_server(up.app) as srv:
        backends = [{"name": name, "plugin": "openai_compatible", "base_url": srv.url + "/v1",
                     "model": "m", "energy": energy} for name in ("one", "two")]
        with gateway(tmp_path, *backends) as gw:
            before = read()
            results = _concurrently(gw.url, ["one", "two"])
            moved = read() - before
            sources = _sources(gw.app.state.ledger, [rid for _, rid in results])
    return [j for j, _ in results], moved, sources


def test_a_request_is_billed_the_energy_its_counters_measured(tmp_path: Path,
                                                             rapl: FakeRapl) -> None:
    rec = RecordingUpstream()
    rec.behave("slow", delay_s=DELAY_S)
    with upstream_server(rec.app) as up:
        cfg: dict[str, Any] = {
            "name": "metered", "plugin": "openai_compatible", "base_url": up.url + "/v1",
            "model": "m", "energy": {"measure": "rapl", "rapl_path": rapl.glob,
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


def test_two_backends_on_one_package_split_its_counter(tmp_path: Path, rapl: FakeRapl) -> None:
    """Each backend with a meter of its own billed the whole change: twice what was used."""
    energy = {"measure": "rapl", "rapl_path": rapl.glob, "watts_busy": 1.0}
    billed, moved, sources = _shared_device_check(tmp_path, energy, rapl.joules, 1.0)
    assert sources == ["rapl", "rapl"]
    assert all(j > 0 for j in billed)
    # the shares add up to what the package used while either was busy: no more than the
    # counter moved around both, and at least the second they were both in flight
    assert sum(billed) <= moved + 1e-6
    assert sum(billed) >= WATTS * 1.0 * 0.8


@pytest.mark.parametrize("measure", ["nvml", "rapl"])
def test_a_measure_without_a_counter_is_recorded_as_profile(tmp_path: Path,
                                                            measure: str) -> None:
    rec = RecordingUpstream()
    rec.behave("slow", delay_s=DELAY_S)
    # GPU 63 and an empty glob exist on no host: the profile (10 W while busy) stands in
    energy = {"measure": measure, "device": 63, "rapl_path": str(tmp_path / "no-rapl*"),
              "watts_busy": 10.0}
    with upstream_server(rec.app) as up:
        cfg = {"name": "metered", "plugin": "openai_compatible", "base_url": up.url + "/v1",
               "model": "m", "energy": energy}
        with gateway(tmp_path, cfg) as gw, sdk(gw.url) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="metered", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            joules = float(raw.headers["x-switchyard-energy-joules"])
            latency_s = float(raw.headers["x-switchyard-latency-ms"]) / 1000
            sources = _sources(gw.app.state.ledger, [raw.headers["x-switchyard-request-id"]])
    assert sources == ["profile"]
    assert 10.0 * DELAY_S * 0.9 <= joules <= 10.0 * latency_s


@pytest.mark.gpu
def test_two_backends_on_one_gpu_split_its_nvml_counter(tmp_path: Path) -> None:
    """On a GPU host (``pip install .[gpu]``): both backends measure GPU 0 through NVML."""
    pynvml = pytest.importorskip("pynvml", reason="needs nvidia-ml-py (pip install '.[gpu]')")
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as e:
        pytest.skip(f"no NVML energy counter on GPU 0 here: {e}")

    def read() -> float:
        return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)) / 1000.0

    energy = {"measure": "nvml", "device": 0, "watts_busy": 1.0}
    billed, moved, sources = _shared_device_check(tmp_path, energy, read, 1.0)
    assert sources == ["nvml", "nvml"], "measured, not the profile"
    assert moved > 0 and all(j > 0 for j in billed)
    # the GPU's energy while both were in flight, split: at most what the counter moved
    # around both requests (1 J for the counter's own update steps), most of it
    assert sum(billed) <= moved + 1.0
    assert sum(billed) >= 0.5 * moved
    assert all(0.25 * sum(billed) <= j <= 0.75 * sum(billed) for j in billed), billed

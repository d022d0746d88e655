"""Measured energy, where the host allows it: RAPL counters on a CPU host, NVML on a GPU host.

A counter gives cumulative joules. Concurrent requests on one device share its energy
fairly: between any two events (a request starting or ending) the energy the counter
moved is split evenly among the requests active in that interval, so each request's
joules are the integral of its fair share (an exact attribution under that rule, and the
shares add up to what the device used while busy).

A device has one meter however many backends run on it (``open_meters``): two backends on
one GPU or one RAPL package split its counter between all their requests, instead of each
billing the whole change.
"""

from __future__ import annotations

import glob
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("switchyard.energy")

RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*"


def rapl_domains(pattern: str = RAPL_GLOB) -> list[Path]:
    """The package domains ``pattern`` matches (``intel-rapl:N``, not the sub-domains
    ``intel-rapl:N:M``, which the package already counts)."""
    return [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).name.count(":") == 1]


class RaplCounter:
    """Sum of the package domains' ``energy_uj``, with wrap-around at ``max_energy_range_uj``."""

    def __init__(self, pattern: str = RAPL_GLOB) -> None:
        self.domains = rapl_domains(pattern)
        if not self.domains:
            raise OSError(f"no RAPL domains at {pattern}")
        self._max = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]
        self._last = [self._raw(i) for i in range(len(self.domains))]
        self._total_uj = 0

    def _raw(self, i: int) -> int:
        return int((self.domains[i] / "energy_uj").read_text())

    def joules(self) -> float:
        for i in range(len(self.domains)):
            now = self._raw(i)
            delta = now - self._last[i]
            if delta < 0:  # the counter wrapped
                delta += self._max[i]
            self._total_uj += delta
            self._last[i] = now
        return self._total_uj / 1e6


class NvmlCounter:
    """Total energy of one GPU since driver load (``nvmlDeviceGetTotalEnergyConsumption``, mJ)."""

    def __init__(self, index: int = 0) -> None:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._h = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._h)  # raises where unsupported

    def joules(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._h)) / 1000.0


class FairShare:
    """Attributes a shared counter's energy to the requests active on it."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._active = 0
        self._last = read()
        self._per_request = 0.0  # cumulative joules per active request

    def _advance(self) -> None:
        now = self._read()
        if self._active:
            self._per_request += (now - self._last) / self._active
        self._last = now

    def start(self) -> float:
        with self._lock:
            self._advance()
            self._active += 1
            return self._per_request

    def stop(self, token: float) -> float:
        with self._lock:
            self._advance()
            self._active = max(0, self._active - 1)
            return self._per_request - token


def open_meter(kind: str, device: int = 0, rapl_glob: str = RAPL_GLOB) -> FairShare | None:
    """A meter for ``measure: rapl | nvml``; None (with a warning) where the host has none,
    and the backend's profile stands in."""
    try:
        if kind == "rapl":
            return FairShare(RaplCounter(rapl_glob).joules)
        if kind == "nvml":
            return FairShare(NvmlCounter(device).joules)
    except Exception as e:  # noqa: BLE001 - reported, never raised to the client
        log.warning("energy: %s counters unavailable here (%s); using the profile", kind, e)
    return None


def device_key(kind: str, device: int = 0, rapl_glob: str = RAPL_GLOB) -> tuple[str, ...]:
    """What a meter reads: the GPU index for NVML, the resolved package domains for RAPL
    (two globs that match the same packages are the same device)."""
    if kind == "nvml":
        return ("nvml", str(device))
    return ("rapl", *sorted(str(p.resolve()) for p in rapl_domains(rapl_glob)))


def open_meters(wanted: Iterable[tuple[str, str, int, str]]) -> dict[str, FairShare]:
    """One meter per device for ``(backend, kind, device, rapl_glob)``: backends on the same
    device get the same ``FairShare``. A backend whose device has no counter is left out
    (its profile stands in), with one warning per device."""
    by_device: dict[tuple[str, ...], FairShare | None] = {}
    meters: dict[str, FairShare] = {}
    for name, kind, device, rapl_glob in wanted:
        key = device_key(kind, device, rapl_glob)
        if key not in by_device:
            by_device[key] = open_meter(kind, device, rapl_glob)
        meter = by_device[key]
        if meter is not None:
            meters[name] = meter
    return meters

"""Measured energy, where the host allows it: RAPL counters on a CPU host, NVML on a GPU host.

A counter gives cumulative joules. Concurrent requests on one device share its energy
fairly: between any two events (a request starting or ending) the energy the counter
moved is split evenly among the requests active in that interval, so each request's
joules are the integral of its fair share (an exact attribution under that rule, and the
shares add up to what the device used while busy).
"""

from __future__ import annotations

import glob
import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("switchyard.energy")

RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*"


class RaplCounter:
    """Sum of the package domains' ``energy_uj``, with wrap-around at ``max_energy_range_uj``."""

    def __init__(self, pattern: str = RAPL_GLOB) -> None:
        self.domains = [Path(p) for p in sorted(glob.glob(pattern)) if ":" in Path(p).name
                        and Path(p).name.count(":") == 1]
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

"""Measured energy: RAPL's sysfs counters (wrap-around included), NVML on a GPU host, and
the fair-share split between concurrent requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.energy import FairShare, NvmlCounter, RaplCounter, device_key, open_meter, open_meters


def _domain(root: Path, name: str, uj: int, max_uj: int = 262_143_328_850) -> Path:
    d = root / name
    d.mkdir()
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def test_rapl_sums_packages_and_handles_wraparound(tmp_path: Path) -> None:
    p0 = _domain(tmp_path, "intel-rapl:0", 1_000_000, max_uj=10_000_000)
    p1 = _domain(tmp_path, "intel-rapl:1", 5_000_000)
    _domain(tmp_path, "intel-rapl:0:0", 0)  # a sub-domain (core) is not double counted
    c = RaplCounter(str(tmp_path / "intel-rapl:[0-9]*"))
    assert c.joules() == 0.0
    (p0 / "energy_uj").write_text("3000000\n")
    (p1 / "energy_uj").write_text("6000000\n")
    assert c.joules() == pytest.approx(3.0)
    (p0 / "energy_uj").write_text("500000\n")  # wrapped: 10 J range, +7.5 J
    assert c.joules() == pytest.approx(10.5)


def test_fair_share_splits_energy_among_active_requests() -> None:
    counter = [0.0]
    fs = FairShare(lambda: counter[0])
    a = fs.start()
    counter[0] = 10.0  # only a is active: a gets 10 J
    b = fs.start()
    counter[0] = 30.0  # a and b share 20 J
    assert fs.stop(a) == pytest.approx(20.0)
    counter[0] = 35.0  # b alone
    assert fs.stop(b) == pytest.approx(15.0)
    counter[0] = 100.0  # idle energy goes to nobody
    c = fs.start()
    assert fs.stop(c) == pytest.approx(0.0)


def test_missing_counters_fall_back_to_profile(tmp_path: Path) -> None:
    assert open_meter("rapl", rapl_glob=str(tmp_path / "nothing*")) is None


def test_backends_on_one_device_share_one_meter(tmp_path: Path) -> None:
    _domain(tmp_path, "intel-rapl:0", 0)
    _domain(tmp_path, "intel-rapl:1", 0)
    both, first = str(tmp_path / "intel-rapl:[0-9]*"), str(tmp_path / "intel-rapl:0")
    meters = open_meters([
        ("a", "rapl", 0, both),
        ("b", "rapl", 0, both),
        ("c", "rapl", 0, str(tmp_path / "intel-rapl:[01]")),  # other glob, same packages
        ("d", "rapl", 0, first),  # one package only: a device of its own
        ("e", "rapl", 0, str(tmp_path / "none*")),  # no counter: the profile stands in
    ])
    assert set(meters) == {"a", "b", "c", "d"}
    assert meters["a"] is meters["b"] is meters["c"]
    assert meters["d"] is not meters["a"]
    assert device_key("nvml", 1) == device_key("nvml", 1) != device_key("nvml", 0)


@pytest.mark.gpu
def test_nvml_reads_a_rising_energy_counter() -> None:
    import time

    c = NvmlCounter(0)
    first = c.joules()
    time.sleep(0.5)
    assert c.joules() >= first > 0

"""Model servers the gateway starts and supervises itself (a backend's ``launch:`` section).

A backend plugin that can run its server (``vllm``, ``llamacpp_server``) builds the command
line from its config and hands it to a ``Launcher``. The launcher:

- starts the server as a child process in its own process group (and, on Linux, asks the
  kernel to end it if the gateway dies without stopping it);
- logs the server's output line by line while it loads (at INFO; at DEBUG once it serves),
  and every ``progress_s`` what it is waiting for: model loading takes minutes;
- keeps the backend unhealthy (``check()`` raises ``ServerNotReady``, which the health loop
  takes as a failed check at once) until the server's health URL answers 200;
- once it has answered, leaves its health to the gateway's health checks (a server busy
  generating may answer late without being down); with ``hang_restart_s`` set, a server
  that fails its health check that long is restarted;
- restarts a server that exits, or that has not become ready in ``ready_timeout_s``, after a
  back-off that doubles from ``restart_backoff_s`` up to ``max_backoff_s`` (reset once a
  server has served for ``max_backoff_s``);
- on shutdown sends SIGTERM to the process group, then SIGKILL after ``stop_timeout_s``.

Where the port is already taken, it starts nothing: a server there that lists our model
(``models_url`` answers with ``model`` among its ids) is used as it is, as when the gateway
runs several workers (the first to bind launches, the others share its server; when it goes
away, the next one launches its own); anything else is reported and waited out.

Nothing here blocks start-up: ``start()`` returns at once and the other backends serve while
this one loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from gateway.backend import BaseBackend
from gateway.errors import BackendUnavailable
from gateway.interfaces import BackendCall, BackendResult, Meter

log = logging.getLogger("switchyard.launch")


class LaunchConfig(BaseModel):
    """A backend's ``launch:`` section: the gateway starts its server."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="what the server loads (a path or a name)")
    args: list[str] = Field(default_factory=list, description="more command-line arguments")
    env: dict[str, str] = Field(default_factory=dict, description="added to the environment")
    python: str | None = Field(
        None, description="the interpreter that has the server installed; default: the gateway's")
    ready_timeout_s: float = Field(600.0, gt=0, description="loading longer: killed, restarted")
    restart_backoff_s: float = Field(1.0, gt=0)
    max_backoff_s: float = Field(60.0, gt=0)
    hang_restart_s: float | None = Field(
        None, gt=0, description="a running server failing its health check this long is restarted")
    health_interval_s: float = Field(5.0, gt=0, description="the checks for hang_restart_s")
    progress_s: float = Field(15.0, gt=0, description="how often loading progress is logged")
    stop_timeout_s: float = Field(20.0, gt=0)
    log_file: str | None = Field(None, description="the server's output, appended")

    def interpreter(self) -> str:
        return self.python or sys.executable


class LaunchedBackend(BaseBackend):
    """A backend whose server a ``Launcher`` may run (``self.launcher``, set by the plugin's
    ``__init__`` when its config has ``launch:``). Put it before the plugin's base class:
    ``class VLLMBackend(LaunchedBackend, OpenAICompatibleBackend)``. Until the server
    answers, health checks and calls fail at once with ``ServerNotReady`` saying what it is
    waiting for."""

    launcher: Launcher | None = None

    async def start(self) -> None:
        if self.launcher is not None:
            await self.launcher.start()
        await super().start()

    async def close(self) -> None:
        await super().close()
        if self.launcher is not None:
            await self.launcher.stop()

    async def probe(self) -> None:
        if self.launcher is not None:
            self.launcher.check()
        await super().probe()

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        if self.launcher is not None:
            self.launcher.check()
        return await super().call(call, meter)

    def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        if self.launcher is not None and not self.launcher.ready:
            return self._not_ready()
        return super().stream(call, meter)  # no extra hop per chunk once it serves

    async def _not_ready(self) -> AsyncIterator[dict[str, Any]]:
        assert self.launcher is not None
        self.launcher.check()
        yield {}  # pragma: no cover - check() raised


class ServerNotReady(BackendUnavailable):
    """The backend's launched server is starting (or restarting): not a failure to count
    twice before marking the backend unhealthy."""

    code = "backend_starting"


def host_port(url: str) -> tuple[str, int]:
    """The host and port a launched server must listen on, from the backend's URL."""
    parts = urlsplit(url)
    if not parts.hostname or parts.port is None:
        raise ValueError(f"a launched server's base_url needs a host and a port: {url!r}")
    return parts.hostname, parts.port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


class Launcher:
    """Runs one server process and keeps it running; see the module docstring."""

    def __init__(self, name: str, argv: Sequence[str], health_url: str, cfg: LaunchConfig,
                 env: Mapping[str, str] | None = None, models_url: str | None = None,
                 model: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.models_url, self.model = models_url, model
        self.argv = list(argv)
        self.health_url = health_url
        self.cfg = cfg
        self.env = {**os.environ, **(env or {}), **cfg.env}
        self.host, self.port = host_port(health_url)
        self.ready = False
        self.state = "not started"
        self.pid: int | None = None
        self.starts = 0
        self.exits: list[int | None] = []  # return codes of the processes that ended
        self.tail: deque[str] = deque(maxlen=30)
        self._clock = clock
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._log_file = Path(cfg.log_file).expanduser() if cfg.log_file else None

    # ---- what the backend calls ----------------------------------------------------------

    async def start(self) -> None:
        """Start supervising; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"launch-{self.name}")

    def check(self) -> None:
        """Raise ``ServerNotReady`` unless the server answers its health check."""
        if not self.ready:
            raise ServerNotReady(f"Backend '{self.name}' is {self.state}.", retry_after=5)

    async def stop(self) -> None:
        """Stop supervising and end the server (SIGTERM, then SIGKILL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._end_process()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.ready, self.state = False, "stopped"

    # ---- supervision ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = self.cfg.restart_backoff_s
        while True:
            served_s = 0.0
            try:
                if not await self._port_taken():
                    served_s = await self._run_once()
                elif await self._serves_our_model():
                    served_s = await self._share()
                    if served_s:
                        continue  # it went away: launch ours at once
                else:
                    self.state = (f"waiting for port {self.port}, which another process holds "
                                  f"(it does not serve {self.model!r})")
                    log.error("backend %s: cannot launch its server: %s:%d is already in use",
                              self.name, self.host, self.port)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("backend %s: launching its server failed", self.name)
                self.state = f"failing to launch ({type(e).__name__}: {e})"
            finally:
                self.ready = False
            await self._end_process()
            if served_s >= self.cfg.max_backoff_s:
                backoff = self.cfg.restart_backoff_s
            log.warning("backend %s: restarting its server in %.0f s", self.name, backoff)
            self.state = f"restarting (in {backoff:.0f} s); {self.state}"
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.cfg.max_backoff_s)

    async def _serves_our_model(self) -> bool:
        """Whether what listens on the port is a server for our model: another worker's
        launch of this same backend (``server.workers``), or one its operator started."""
        if self.models_url is None or self.model is None:
            return False
        session = self._session()
        try:
            async with session.get(self.models_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                body = await r.json(content_type=None) if r.status == 200 else {}
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return False
        data = body.get("data") if isinstance(body, dict) else None
        return isinstance(data, list) and any(
            isinstance(m, dict) and m.get("id") == self.model for m in data)

    async def _share(self) -> float:
        """Use the server another process runs for this backend, without launching one,
        until it fails two health checks in a row: how long it was used."""
        t0 = self._clock()
        self.ready = True
        self.state = f"using the server another process runs on port {self.port}"
        log.info("backend %s: %s:%d already serves %s; using it (not launching another)",
                 self.name, self.host, self.port, self.model)
        failures = 0
        while failures < 2:
            await asyncio.sleep(self.cfg.health_interval_s)
            failures = 0 if await self._healthy() else failures + 1
        self.ready = False
        log.warning("backend %s: the server on port %d went away; launching its own", self.name,
                    self.port)
        self.state = f"launching its own server (the one on port {self.port} went away)"
        return self._clock() - t0

    async def _run_once(self) -> float:
        """One server process, from start to its end: how long it served."""
        self.starts += 1
        t0 = self._clock()
        self.state = "starting its server"
        log.info("backend %s: launching %s", self.name, " ".join(self.argv))
        self._proc = proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env, start_new_session=True,
            preexec_fn=_die_with_parent if _LIBC is not None else None, limit=1 << 20)
        self.pid = proc.pid
        reader = asyncio.create_task(self._read_output(proc))
        try:
            if not await self._wait_ready(proc, t0):
                return 0.0
            self.ready = True
            self.state = "serving"
            log.info("backend %s: server ready in %.1f s (pid %d)", self.name,
                     self._clock() - t0, proc.pid)
            t_ready = self._clock()
            await self._watch(proc)
            return self._clock() - t_ready
        finally:
            self.ready = False
            await self._end_process()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _wait_ready(self, proc: asyncio.subprocess.Process, t0: float) -> bool:
        """Poll the health URL until it answers; False if the process ended or took too long."""
        next_progress = t0 + self.cfg.progress_s
        while True:
            if proc.returncode is not None:
                self._exited(proc, "while loading")
                return False
            waited = self._clock() - t0
            self.state = (f"loading its server (pid {proc.pid}, {waited:.0f} s so far, waiting "
                          f"for {self.health_url})")
            if await self._healthy():
                return True
            if waited > self.cfg.ready_timeout_s:
                log.error("backend %s: server not ready after %.0f s; last output: %s",
                          self.name, waited, self._last_line())
                self.state = f"not ready after {waited:.0f} s"
                return False
            if self._clock() >= next_progress:
                next_progress += self.cfg.progress_s
                log.info("backend %s: %s; last output: %s", self.name, self.state, self._last_line())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.5)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """While the server runs; returns when it exits, or when it has failed its health
        check for ``hang_restart_s`` (if set). Whether it answers meanwhile is the gateway's
        health check's business (a server busy generating may answer late, not be down)."""
        hang_s = self.cfg.hang_restart_s
        failing_since: float | None = None
        while True:
            # returncode, not wait(): wait() also waits for the end of the output pipe, which
            # the server's own children (vLLM's engine) hold open after it died
            next_check = self._clock() + self.cfg.health_interval_s
            while proc.returncode is None and (hang_s is None or self._clock() < next_check):
                await asyncio.sleep(0.2)
            if proc.returncode is not None:
                self._exited(proc, "")
                return
            assert hang_s is not None
            if await self._healthy():
                failing_since = None
                continue
            now = self._clock()
            if failing_since is None:
                failing_since = now
            if now - failing_since > hang_s:
                log.error("backend %s: server (pid %d) failed its health check for %.0f s; "
                          "restarting it", self.name, proc.pid, now - failing_since)
                self.state = f"hung (no answer for {now - failing_since:.0f} s)"
                return

    def _exited(self, proc: asyncio.subprocess.Process, when: str) -> None:
        self.exits.append(proc.returncode)
        what = f"exited with {proc.returncode}" + (f" {when}" if when else "")
        self.state = f"down (its server {what})"
        log.error("backend %s: server (pid %d) %s; last output:\n%s", self.name, proc.pid, what,
                  "\n".join(list(self.tail)[-10:]) or "(none)")

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _healthy(self) -> bool:
        try:
            async with self._session().get(self.health_url,
                                      timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def _port_taken(self) -> bool:
        """Whether something already listens where the server must: a stale server that the
        health check would take for ours."""
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 2)
        except (TimeoutError, OSError):
            return False
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
        return True

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        out = self._log_file.open("ab") if self._log_file is not None else None
        try:
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:  # a line past the limit: skip what was buffered
                    continue
                if not raw:
                    return
                if out is not None:
                    out.write(raw)
                    out.flush()
                line = raw.decode("utf-8", "replace").rstrip().rsplit("\r", 1)[-1]
                if not line:
                    continue
                self.tail.append(line)
                log.log(logging.DEBUG if self.ready else logging.INFO, "[%s] %s", self.name, line)
        finally:
            if out is not None:
                out.close()

    def _last_line(self) -> str:
        return self.tail[-1] if self.tail else "(nothing yet)"

    async def _end_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.cfg.stop_timeout_s)
            except TimeoutError:
                log.warning("backend %s: server (pid %d) ignored SIGTERM for %.0f s; killing it",
                            self.name, proc.pid, self.cfg.stop_timeout_s)
            else:
                log.info("backend %s: server (pid %d) stopped", self.name, proc.pid)
        _signal_group(proc.pid, signal.SIGKILL)  # what is left of its group (workers)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)



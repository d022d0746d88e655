"""``switchyard serve --workers N`` (``server.workers``): N worker processes on one port,
each with its own event loop, under a small parent that starts, watches and stops them.

The parent binds the address once, so a port in use fails once with one message and port 0
picks one port for every worker (and first without ``SO_REUSEPORT``, so that a port another
process holds, even with ``SO_REUSEPORT``, is refused rather than silently shared). Each worker is forked from it and builds its own app:
plugins, backends (the in-process llama.cpp model is loaded once per worker), its
connection to the state store, its ledger writer. Each listens on a socket of its own bound
to that port with ``SO_REUSEPORT``, so the kernel spreads new connections evenly over the
workers (a single shared socket lets whichever worker wakes first take a burst of
connections, and a kept-alive connection stays where it landed). Without ``SO_REUSEPORT``
the workers share the parent's socket.

Start-up: the first worker starts alone, so a configuration that cannot start is reported
once, with its exit status (2: configuration, 3: start-up failure); once it is ready the
others start. A worker that dies after it was ready is replaced at once. Once the first was
ready the configuration is proven, and a later worker that dies before it is ready (killed
for memory while it loads a model, say) is replaced after a back-off, 0.5 s doubling to
8 s; a worker that fails to start ``START_ATTEMPTS`` times in a row (5: 7.5 s of back-off
in all) stops the server with status 3: a crash loop must not go on unseen. Each
failure and each replacement is logged with the worker, its pid and how it ended. SIGINT
or SIGTERM to the parent sends SIGTERM to every worker: each stops accepting, finishes its
requests (up to 10 s), runs its shutdown (the ledger's last flush) and exits; then the
parent exits 0.

What the workers share must live outside them: ``state.kind: sqlite`` or ``redis``
(``gateway.config.workers_errors`` refuses ``memory``). Per worker, and so N times: the
response cache's in-process index (with a ``sqlite`` store), the circuit breakers, the
Prometheus metrics (``/metrics`` answers for the worker that takes the scrape).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from gateway.config import Settings

log = logging.getLogger("switchyard.workers")

STOP_TIMEOUT_S = 30.0  # a worker's graceful stop (10 s for requests, then its shutdown)
STARTUP_FAILURE = 3  # uvicorn's exit status for a failed start
START_ATTEMPTS = 5  # starts in a row that may fail before ready, per worker, once proven
BACKOFF_S, BACKOFF_MAX_S = 0.5, 8.0  # before the next start: doubling from BACKOFF_S


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to (host, port), not listening; SO_REUSEPORT when asked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass
class _Worker:
    index: int
    pid: int
    ready: bool = False


def _ended(status: int) -> str:
    """How a process ended, from its ``waitpid`` status: for a log line."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


ServeWorker = Callable[[socket.socket, Callable[[], None]], int]
"""``serve(listening_socket, notify_ready) -> exit status``: one worker's whole life."""


class Supervisor:
    """Forks ``n`` workers running ``serve`` on the parent's bound socket (or, with
    ``reuse_port``, on sockets of their own on its address), replaces a worker that dies
    after it was ready, and stops them all on SIGINT/SIGTERM."""

    def __init__(self, n: int, sock: socket.socket, serve: ServeWorker, *,
                 reuse_port: bool, backlog: int = 2048) -> None:
        self.n, self.sock, self.serve = n, sock, serve
        self.reuse_port, self.backlog = reuse_port, backlog
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.status = 0
        self._ready_r, self._ready_w = os.pipe()
        self._parent = os.getpid()
        self._others_started = self._announced = False
        self._deadline = 0.0
        self._failures: dict[int, int] = {}  # worker index: starts in a row that failed
        self._respawn: dict[int, float] = {}  # worker index: when to start it again

    # ---- in the worker ---------------------------------------------------------------

    def _listener(self) -> socket.socket:
        if not self.reuse_port:
            self.sock.listen(self.backlog)
            return self.sock
        host, port = self.sock.getsockname()[:2]
        own = bind(host, port, reuse_port=True)
        own.listen(self.backlog)
        self.sock.close()
        return own

    def _child(self, index: int) -> None:
        """The forked worker: never returns."""
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # uvicorn raises the signal that stopped it again once it is done: exit then
            signal.signal(signal.SIGTERM, _exit_quietly)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            _die_with_parent()
            if os.getppid() != self._parent:  # the parent died before the line above
                os._exit(1)
            os.close(self._ready_r)
            ready_w = self._ready_w

            def notify() -> None:  # its pid: a byte from a worker since replaced is no one's
                os.write(ready_w, os.getpid().to_bytes(4, "little"))

            code = self.serve(self._listener(), notify)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except KeyboardInterrupt:  # Ctrl-C while it was starting: the parent stops too
            code = 130
        except BaseException:  # a worker reports and exits, never returns
            log.exception("worker %d failed", index)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
                logging.shutdown()
            os._exit(code)

    # ---- in the parent ---------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        # blocked until the child has its own handlers: the parent's would stop its siblings
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(index)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self.workers[pid] = _Worker(index, pid)

    def _on_signal(self, sig: int, frame: Any) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(sig).name, len(self.workers))
        self._stop()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._respawn.clear()
        self._deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)

    def _read_ready(self, timeout: float) -> None:
        try:
            readable, _, _ = select.select([self._ready_r], [], [], timeout)
        except InterruptedError:
            return
        if not readable:
            return
        data = os.read(self._ready_r, 256)  # 4-byte pids, each written whole
        for at in range(0, len(data), 4):
            w = self.workers.get(int.from_bytes(data[at:at + 4], "little"))
            if w is not None:
                w.ready = True
                if self._failures.pop(w.index, 0) or self._announced:
                    log.info("worker %d (pid %d) ready", w.index, w.pid)
        if not self._others_started and not self.stopping and self._ready():
            self._others_started = True  # the first one is up: the configuration starts
            for index in range(1, self.n):
                self._spawn(index)
        if len(self._ready()) == self.n and not self._announced:
            self._announced = True
            host, port = self.sock.getsockname()[:2]
            log.info("%d workers ready on http://%s:%d (pids %s)", self.n, host,
                     port, " ".join(str(w.pid) for w in sorted(self.workers.values(),
                                                                key=lambda w: w.index)))

    def _ready(self) -> list[_Worker]:
        return [w for w in self.workers.values() if w.ready]

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            if self.stopping:
                continue
            if w.ready:
                log.error("worker %d (pid %d) %s; starting another", w.index, pid,
                          _ended(status))
                self._spawn(w.index)
            elif not self._others_started:  # the first could not start: neither will another
                log.error("worker %d (pid %d) %s before it was ready; stopping", w.index, pid,
                          _ended(status))
                self._give_up(status)
            else:
                self._failed_start(w, status)

    def _failed_start(self, w: _Worker, status: int) -> None:
        """A worker died before it was ready, with the configuration proven by the first:
        start another after a back-off, or stop after ``START_ATTEMPTS`` in a row."""
        failures = self._failures[w.index] = self._failures.get(w.index, 0) + 1
        if failures >= START_ATTEMPTS:
            log.error("worker %d (pid %d) %s before it was ready, %d starts in a row; "
                      "stopping", w.index, w.pid, _ended(status), failures)
            self._give_up(status)
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1))
        log.error("worker %d (pid %d) %s before it was ready (failed start %d of at most %d "
                  "in a row); starting another in %.1f s", w.index, w.pid, _ended(status),
                  failures, START_ATTEMPTS, delay)
        self._respawn[w.index] = time.monotonic() + delay

    def _give_up(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        self.status = code if code in (2, STARTUP_FAILURE) else STARTUP_FAILURE
        self._stop()

    def _respawn_due(self) -> float:
        """Start the workers whose back-off is over; the seconds to the next one (or 0.2)."""
        now, wait = time.monotonic(), 0.2
        for index, at in list(self._respawn.items()):
            if at <= now:
                del self._respawn[index]
                self._spawn(index)
            else:
                wait = min(wait, at - now)
        return wait

    def run(self) -> int:
        """Until stopped: the exit status (0 after a clean stop)."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._spawn(0)
            while self.workers or self._respawn:
                self._read_ready(self._respawn_due() if self._respawn else 0.2)
                self._reap()
                if self.stopping and self.workers and time.monotonic() > self._deadline:
                    for w in self.workers.values():
                        log.error("worker %d (pid %d) did not stop in %.0f s: killed",
                                  w.index, w.pid, STOP_TIMEOUT_S)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(w.pid, signal.SIGKILL)
                    self._deadline = float("inf")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()
            os.close(self._ready_r)
            os.close(self._ready_w)
        return self.status


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _exit_quietly(sig: int, frame: Any) -> None:
    raise SystemExit(0)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies (a parent killed with SIGKILL must not
    leave workers holding the port)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve_workers(settings: Settings, make_server: Callable[[], uvicorn.Server]) -> int:
    """Run ``settings.server.workers`` workers, each serving ``make_server()`` (called in
    the worker: it builds the app there); the exit status."""
    cfg = settings.server
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    try:
        # first without SO_REUSEPORT: a port another process holds (a second gateway
        # started with --workers too, say) is refused, never silently shared with it
        with bind(cfg.host, cfg.port, reuse_port=False) as probe:
            port = probe.getsockname()[1]
        sock = bind(cfg.host, port, reuse_port=reuse_port)
    except OSError as e:
        print(f"switchyard: cannot listen on {cfg.host}:{cfg.port}: {e.strerror}",
              file=sys.stderr)
        return STARTUP_FAILURE

    def serve(listener: socket.socket, notify: Callable[[], None]) -> int:
        srv = make_server()
        startup = srv.startup

        async def started(sockets: list[socket.socket] | None = None) -> None:
            await startup(sockets=sockets)
            if srv.started:
                notify()

        srv.startup = started  # type: ignore[method-assign]
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the signal it caught
            srv.run(sockets=[listener])
        return 0 if srv.started else STARTUP_FAILURE

    return Supervisor(cfg.workers, sock, serve, reuse_port=reuse_port).run()

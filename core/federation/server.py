"""``dopamine coordinator serve``: the coordinator on uvicorn, HTTPS only.

It runs the same in a terminal, as a background process of the app (core.federation.service) and as a
system service (installer/dopamine-coordinator.service):

- SIGTERM and SIGINT stop it gracefully: uvicorn closes the connections, the advancing thread finishes
  what it is doing, SQLite is closed and the exit status is 0. (uvicorn re-raises the signal once it has
  shut down; left to the default handler that would kill the process before the coordinator stopped.)
- coordinator.log rotates by size (coordinator.toml's log_max_bytes, log_backups).
- While it serves it keeps DIR/service.json (pid, address, port) and DIR/live.json (which hospitals
  are online, when each was last seen, the bytes each sent) for ``coordinator status`` and the app.
"""

from __future__ import annotations

import ctypes
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core import __version__
from core.config import atomic_write_bytes
from core.errors import FederationError
from core.federation.auth import HEADER_HOSPITAL
from core.federation.layout import FederationPaths, load_settings
from core.federation.tls import server_ssl_context, tls_files

log = logging.getLogger("dopamine.coordinator")

LIVE_INTERVAL_S = 2.0


def _file_logging(path: Path, *, max_bytes: int, backups: int) -> logging.Handler:
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("dopamine")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


M_ARENA_MAX = -8  # glibc mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def _limit_malloc_arenas() -> None:
    """glibc gives threads their own malloc arenas, and each keeps the multi-megabyte upload buffers
    it freed; with many hospitals uploading at once the request thread pool spreads them over up to
    8 x cores arenas, so peak memory would creep up with the number of hospitals. Two arenas keep
    it flat (measured: +5 % instead of +18 % from 3 to 30 hospitals). A fixed mmap threshold keeps
    every buffer of 256 KiB or more (uploads, the round's vectors) out of the arenas altogether: glibc
    otherwise raises the threshold to the size of the first such buffer freed, and from then on the
    arenas keep them (measured with 30 hospitals of 2.9 MB uploads: peak 221 MB, 177 MB with it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, 2)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


TLS_READ_BUFFER_BYTES = 32 * 1024


def _small_tls_read_buffers() -> None:
    """asyncio gives every TLS connection a 256 KiB read buffer (SSLProtocol.max_size), zeroed, so resident:
    with each hospital holding two or three connections open (its long polls) that was most of the
    coordinator's memory per hospital (measured: 200 idle connections +56 MB). 32 KiB holds two TLS records;
    a large upload takes more reads of it, not more memory."""
    try:
        from asyncio import sslproto

        if getattr(sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER_BYTES:
            sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES
    except ImportError:
        pass


class ReceivedBytes:
    """ASGI middleware: the request-body bytes each hospital sent in requests the coordinator accepted."""

    def __init__(self, app: Any, totals: dict[str, int]) -> None:
        self.app = app
        self.totals = totals
        self.lock = threading.Lock()
        self._header = HEADER_HOSPITAL.lower().encode()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.totals)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        hospital = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == self._header), "")
        size = 0
        status = 0

        async def counting_receive() -> dict:
            nonlocal size
            message = await receive()
            if message.get("type") == "http.request":
                size += len(message.get("body", b""))
            return message

        async def status_send(message: dict) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        await self.app(scope, counting_receive, status_send)
        # Only accepted requests count: a 2xx means the signature verified for this hospital id.
        if hospital and size and 200 <= status < 300:
            with self.lock:
                self.totals[hospital] = self.totals.get(hospital, 0) + size


def read_live(paths: FederationPaths) -> dict:
    """DIR/live.json as written by a serving coordinator ({} when there is none or it is unreadable)."""
    try:
        data = json.loads(paths.live.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _LiveStatus:
    """Writes DIR/live.json every few seconds: presence and bytes received live only in this process."""

    def __init__(self, paths: FederationPaths, coordinator: Any, received: ReceivedBytes) -> None:
        self.paths, self.coordinator, self.received = paths, coordinator, received
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coordinator-live-status", daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.write(serving=False)

    def _loop(self) -> None:
        while not self._stop.wait(LIVE_INTERVAL_S):
            try:
                self.write()
            except Exception:  # noqa: BLE001 -- the host view is a convenience; never stop serving for it
                log.exception("writing %s failed", self.paths.live)

    def write(self, *, serving: bool = True) -> None:
        now = time.time()
        ids = [peer.hospital_id for peer in self.coordinator.peers()]
        seen = self.coordinator.presence.last_seen()
        gone = self.coordinator.presence.gone(ids, now)
        received = self.received.snapshot()
        hospitals = {h: {"online": serving and h in seen and h not in gone, "last_seen": seen.get(h),
                         "bytes_received": received.get(h, 0)} for h in sorted(set(ids) | set(received))}
        data = {"federation_id": self.coordinator.federation_id, "written_at": now, "serving": serving,
                "pid": os.getpid(), "hospitals": hospitals}
        atomic_write_bytes(self.paths.live, json.dumps(data, indent=1).encode())


def _previous_bytes(paths: FederationPaths, federation_id: str) -> dict[str, int]:
    """Bytes counted by earlier runs of this coordinator, so the totals survive a restart."""
    live = read_live(paths)
    if live.get("federation_id") != federation_id or not isinstance(live.get("hospitals"), dict):
        return {}
    totals = {}
    for hospital, entry in live["hospitals"].items():
        value = entry.get("bytes_received") if isinstance(entry, dict) else None
        if isinstance(value, int) and value >= 0:
            totals[str(hospital)] = value
    return totals


def _write_service_record(paths: FederationPaths, *, url: str, host: str, port: int) -> None:
    record = {"pid": os.getpid(), "url": url, "host": host, "port": port, "started_at": time.time(),
              "folder": str(paths.root.resolve()), "software_version": __version__}
    atomic_write_bytes(paths.service_record, json.dumps(record, indent=1).encode())


def _remove_service_record(paths: FederationPaths) -> None:
    try:
        record = json.loads(paths.service_record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(record, dict) and record.get("pid") == os.getpid():  # never another coordinator's
        paths.service_record.unlink(missing_ok=True)


class _Terminated(BaseException):
    """SIGTERM or SIGINT arrived before uvicorn took over the signals (e.g. while the evaluation set loads)."""


def serve(folder: Path, *, host: str | None = None, port: int | None = None) -> None:
    """Serve the federation in ``folder`` until SIGTERM or SIGINT, then stop gracefully."""
    import uvicorn

    _limit_malloc_arenas()
    _small_tls_read_buffers()
    from core.federation.app import create_app
    from core.federation.coordinator import Coordinator

    paths = FederationPaths(Path(folder))
    if not paths.plan.exists():
        raise FederationError(f"{folder} is not a federation folder (no plan.toml); run `dopamine coordinator init` first.")
    settings = load_settings(paths)
    tls = tls_files(paths.tls)
    for required in (tls.server_cert, tls.server_key):
        if not required.exists():
            raise FederationError(f"The coordinator's TLS file {required} is missing; the federation folder is incomplete.")
    handler = _file_logging(paths.log, max_bytes=settings.log_max_bytes, backups=settings.log_backups)
    serving: dict[str, Any] = {"server": None, "signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        serving["signal"] = signal.Signals(signum).name
        server = serving["server"]
        if server is None:
            raise _Terminated()
        server.should_exit = True

    handled = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    coordinator = None
    live = None
    try:
        coordinator = Coordinator(paths.root)
        received = ReceivedBytes(None, _previous_bytes(paths, coordinator.federation_id))
        coordinator.start()
        received.app = create_app(coordinator)
        config = uvicorn.Config(
            received,
            host=host or settings.bind_host,
            port=port if port is not None else settings.port,
            ssl_certfile=str(tls.server_cert),
            ssl_keyfile=str(tls.server_key),
            ssl_context_factory=server_ssl_context,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=120,
            # Long polls and peers that never answer a TLS close would otherwise hold up a restart.
            timeout_graceful_shutdown=3,
            lifespan="on",
            http="h11",
        )
        log.info("serving %s on %s:%s (pid %d)", settings.url, config.host, config.port, os.getpid())
        server = uvicorn.Server(config)
        serving["server"] = server
        _write_service_record(paths, url=settings.url, host=config.host, port=config.port)
        live = _LiveStatus(paths, coordinator, received)
        live.start()
        try:
            server.run()
        except SystemExit:  # uvicorn exits this way when it cannot bind
            pass
        if not server.started:
            raise FederationError(
                f"The coordinator could not listen on {config.host}:{config.port} (address in use?); "
                "stop the other process or choose another --port."
            )
    except _Terminated:
        pass
    finally:
        if live is not None:
            live.stop()
        if coordinator is not None:
            coordinator.stop()
        _remove_service_record(paths)
        if serving["server"] is not None:
            log.info("coordinator stopped (%s)", serving["signal"] or "its server ended")
        for signum, before in previous.items():
            if before is not None:
                signal.signal(signum, before)
        logging.getLogger("dopamine").removeHandler(handler)
        handler.close()

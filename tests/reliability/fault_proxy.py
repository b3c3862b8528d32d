"""A network that misbehaves (issue 13): TCP proxies of our own on loopback, between hospitals and the
coordinator. Each runs an asyncio loop in a thread of the test process and counts what it did, so a test
can show that the fault really happened.

``FaultProxy``: a transparent TCP proxy to one upstream (the coordinator). The TLS inside stays
end-to-end; the proxy only sees bytes (and the TLS record headers), so it finds an upload as a burst of
client bytes (``upload_bytes`` without an answer in between; a TLS 1.3 server's session tickets are not an
answer) and applies ``Faults``:

- latency and jitter (a delay line that keeps the order) and a bandwidth limit, each direction alone;
- ``upload_faults``: what happens to the 1st, 2nd, ... upload it sees:
  ``"cut"`` both sides reset (RST) once ``upload_bytes`` of it passed;
  ``"truncate"`` the coordinator gets the first ``upload_bytes`` then a clean end of stream (FIN) mid-request,
  and the hospital's connection is closed once the coordinator's side is;
  ``"lose_answer"`` the upload goes through whole, the coordinator's answer is dropped and both sides reset:
  the hospital sends the same request again (a duplicated request at the coordinator);
  ``"half_open"`` every connection of the proxy stops forwarding in both directions but stays open (a
  dead link: a cable pulled behind a NAT); new connections work again;
  ``"stall"`` the same, but nothing is read any more either: the hospital's sending blocks once the
  buffers are full (a receiver frozen with its window shut);
  ``"replay"`` the upload goes through; once it is answered, everything the hospital sent on its connection
  is sent again, byte for byte, on a new connection (an attacker's duplicate: TLS must refuse it);
  ``"pass"`` nothing.

``ConnectProxy``: an explicit HTTP proxy (``CONNECT host:port``) like a hospital's corporate one; counts
the tunnels it opened; ``refuse`` answers every CONNECT with that status instead (a proxy's policy).

``InspectingProxy``: a CONNECT proxy that inspects TLS: it terminates the hospital's TLS with a
certificate for the requested host made on the fly under its own CA, and re-encrypts to the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 16 * 1024


@dataclass
class Faults:
    latency_s: float = 0.0  # added one way, each direction
    jitter_s: float = 0.0  # plus uniform(0, jitter_s), order kept
    bandwidth_bps: float | None = None  # bits per second, each direction
    upload_bytes: int = 64 * 1024  # a client burst this large is an upload
    # in order, one per upload seen (resends included): "cut" | "truncate" | "lose_answer" | "half_open" | "stall"
    # | "replay" | "pass"
    upload_faults: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Stats:
    connections: int = 0
    bytes_up: int = 0  # hospital -> coordinator, forwarded
    bytes_down: int = 0
    uploads: int = 0  # uploads seen (client bursts of at least upload_bytes)
    cut: int = 0
    truncated: int = 0
    answers_lost: int = 0
    half_open: int = 0  # times the link went dead
    stalled: int = 0  # times it went dead without reading any more
    replayed: int = 0  # connections sent again byte for byte (counted once the coordinator's side ended)
    replay_answers: int = 0  # bytes the coordinator sent back to the replays (a TLS alert at most)
    dead_connections: int = 0  # connections frozen by it
    events: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), what)

    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def first(self, prefix: str) -> float | None:
        return next((t for t, what in self.events if what.startswith(prefix)), None)


class _Loop:
    """An asyncio loop in a daemon thread, with one listening server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=type(self).__name__)
        self._tasks: set[asyncio.Task] = set()
        self.closing = False

    def start(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, ValueError, asyncio.CancelledError):
            pass  # the connection's end; cancelled: the proxy closes
        finally:
            self._tasks.discard(task)
            _abort(writer)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0.05)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _abort(writer: asyncio.StreamWriter | None, *, reset: bool = False) -> None:
    """Close at once; ``reset``: with an RST, as a cut cable's far end or a firewall does."""
    if writer is None or writer.transport.is_closing():
        return
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Records:
    """The content types of the TLS records in one direction of a connection (their 5-byte headers are in
    the clear): enough to tell a TLS 1.3 server's session tickets from an answer."""

    def __init__(self) -> None:
        self.header = b""
        self.left = 0  # bytes of the current record's body still to come

    def feed(self, data: bytes) -> list[int]:
        types, i = [], 0
        while i < len(data):
            if self.left:
                step = min(self.left, len(data) - i)
                self.left -= step
                i += step
                continue
            step = min(5 - len(self.header), len(data) - i)
            self.header += data[i:i + step]
            i += step
            if len(self.header) == 5:
                types.append(self.header[0])
                self.left = int.from_bytes(self.header[3:5], "big")
                self.header = b""
        return types


APPLICATION_DATA = 23


class _Link:
    """One hospital connection and its upstream, pumped in both directions under ``Faults``."""

    def __init__(self, proxy: _Pumping, client: tuple, upstream: tuple) -> None:
        self.proxy, self.faults, self.stats = proxy, proxy.faults, proxy.stats
        (self.c_reader, self.c_writer), (self.u_reader, self.u_writer) = client, upstream
        self.burst = 0  # client bytes since the coordinator last sent something
        self.in_upload = False
        self.lose_answer = False
        self.last_client_read = 0.0
        self.last_server_read = 0.0
        self.up_pending = 0  # chunks read from the hospital, not yet written to the coordinator
        self.recorded: bytearray | None = bytearray() if "replay" in self.faults.upload_faults else None
        # TLS 1.3 (the server's handshake is encrypted): its session tickets follow the client's Finished, the
        # hospital's first encrypted record, and may arrive in the middle of the first request.
        self.records = {True: _Records(), False: _Records()}
        self.tls13 = False
        self.client_encrypted = False
        self.tickets_left = 0  # session ticket records still to come (Python's and OpenSSL's servers send 2)
        self.ticket_tail = False  # the last one's record continues in the next read
        self.replay = False
        self.dead = asyncio.Event()
        self.done = asyncio.Event()

    async def run(self) -> None:
        self.proxy.links.add(self)
        try:
            await asyncio.gather(self._direction(up=True), self._direction(up=False), return_exceptions=True)
        finally:
            self.proxy.links.discard(self)
            if self.dead.is_set():
                await self.proxy.stopping.wait()  # a dead link's far side never learns: open until the proxy closes
            _abort(self.c_writer)
            _abort(self.u_writer)

    def reset(self) -> None:
        self.done.set()
        _abort(self.c_writer, reset=True)
        _abort(self.u_writer, reset=True)

    async def _direction(self, *, up: bool) -> None:
        reader = self.c_reader if up else self.u_reader
        writer = self.u_writer if up else self.c_writer
        queue: asyncio.Queue = asyncio.Queue(maxsize=8)
        sender = asyncio.ensure_future(self._send(queue, writer, up))
        last = 0.0
        bandwidth = self.faults.bandwidth_bps
        size = CHUNK if bandwidth is None else max(1024, min(CHUNK, int(bandwidth / 80)))
        try:
            while not self.done.is_set():
                if self.dead.is_set() and self.proxy.stalled:
                    await self.proxy.stopping.wait()  # frozen: nothing read, the sender's buffers fill up
                    return
                data = await reader.read(size)
                if up:
                    self.last_client_read = time.monotonic()
                else:
                    self.last_server_read = time.monotonic()
                if self.dead.is_set():
                    if not data:
                        return
                    continue  # a dead link: what is sent goes nowhere
                if up and self.recorded is not None:
                    self.recorded += data
                if not data:
                    await queue.put(None)
                    await sender
                    return
                data, then = self._inspect(data, up)
                if data:
                    delay = self.faults.latency_s + self.proxy.random.uniform(0, self.faults.jitter_s)
                    last = max(last, time.monotonic() + delay)
                    if up:
                        self.up_pending += 1
                    await queue.put((last, data))
                if then == "eof":  # truncated: what came so far, then the end of the stream
                    await queue.put(None)
                    while not self.done.is_set() and await reader.read(size):
                        pass  # the rest of the hospital's request goes nowhere (it must not block sending it)
                    return
                if then == "stop":
                    return
        finally:
            if not sender.done():
                sender.cancel()

    def _inspect(self, data: bytes, up: bool) -> tuple[bytes, str]:
        """Account the bytes; apply a fault when an upload shows. Returns (what to forward, then what):
        "" go on, "eof" end the stream after it, "stop" forward nothing more."""
        encrypted = self.records[up].feed(data).count(APPLICATION_DATA)
        if not up:
            if encrypted and not self.client_encrypted:
                self.tls13 = True  # the server's first flight is encrypted: TLS 1.3
            if self.lose_answer:
                return b"", ""  # swallowed: the hospital gets nothing more on this connection
            if self.client_encrypted and (self.ticket_tail or self.tickets_left >= encrypted > 0):
                self.tickets_left -= encrypted
                self.ticket_tail = self.tickets_left == 0 and self.records[up].left > 0
                return data, ""  # session tickets (after the hospital's Finished), not an answer
            self.tickets_left, self.ticket_tail = 0, False
            if self.in_upload and self.replay and self.recorded is not None:  # the upload's answer: copy it all
                self.replay = False
                asyncio.ensure_future(self.proxy.replay(bytes(self.recorded)))
            self.burst, self.in_upload = 0, False
            return data, ""
        if encrypted and not self.client_encrypted:
            self.client_encrypted = True
            self.tickets_left = 2 if self.tls13 else 0
        self.burst += len(data)
        if self.in_upload or self.burst < self.faults.upload_bytes:
            return data, ""
        self.in_upload = True
        self.stats.uploads += 1
        number = self.stats.uploads
        fault = self.faults.upload_faults[number - 1] if number <= len(self.faults.upload_faults) else "pass"
        self.stats.note(f"upload {number}: {fault}")
        if fault == "cut":
            self.stats.cut += 1
            self.reset()
            return b"", "stop"
        if fault == "truncate":
            self.stats.truncated += 1
            asyncio.ensure_future(self._watchdog())
            return data, "eof"
        if fault == "replay":
            self.replay = True
        elif fault == "lose_answer":
            self.lose_answer = True
            asyncio.ensure_future(self._lose_answer())
        elif fault in ("half_open", "stall"):
            self.proxy.go_dead(stall=fault == "stall")
            return b"", ""
        return data, ""

    async def _lose_answer(self) -> None:
        """Once the whole upload is with the coordinator (the hospital went quiet, nothing left to forward) and
        it answered (or a second passed), reset both sides: the coordinator has the request, the hospital no
        answer, so it sends the same request again. Everything the coordinator sends meanwhile is dropped."""
        quiet_since = None
        while not self.done.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            if self.up_pending or now - self.last_client_read < 0.2:
                quiet_since = None
                continue
            quiet_since = quiet_since or now
            if self.last_server_read > quiet_since or now - quiet_since > 1.0:
                break
        await asyncio.sleep(0.3)  # let the coordinator read it all off its socket before the reset
        self.stats.answers_lost += 1
        self.stats.note("answer lost")
        self.reset()

    async def _watchdog(self) -> None:
        """A truncated request: the coordinator's side should close soon; if it does not, reset both."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), 10.0)
        self.reset()

    async def _send(self, queue: asyncio.Queue, writer: asyncio.StreamWriter, up: bool) -> None:
        free_at = 0.0
        while True:
            item = await queue.get()
            if self.dead.is_set() or self.done.is_set():
                return
            if item is None:  # the end of this direction: pass the half-close on
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                if not up:
                    self.done.set()
                return
            deliver_at, data = item
            now = time.monotonic()
            if self.faults.bandwidth_bps:
                free_at = max(free_at, now)
                deliver_at = max(deliver_at, free_at)
                free_at = deliver_at + len(data) * 8 / self.faults.bandwidth_bps
            if deliver_at > now:
                await asyncio.sleep(deliver_at - now)
            if self.dead.is_set() or self.done.is_set():
                return
            writer.write(data)
            await writer.drain()
            if up:
                self.up_pending -= 1
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)


class _Pumping(_Loop):
    def __init__(self, faults: Faults | None = None) -> None:
        super().__init__()
        self.faults = faults or Faults()
        self.stats = Stats()
        self.links: set[_Link] = set()
        self.stopping = asyncio.Event()
        self.random = random.Random(self.faults.seed)
        self.stalled = False

    def go_dead(self, *, stall: bool = False) -> None:
        self.stalled = stall
        if stall:
            self.stats.stalled += 1
        else:
            self.stats.half_open += 1
        self.stats.note("half open")  # both: the link is dead from here
        for link in list(self.links):
            link.dead.set()
            self.stats.dead_connections += 1

    async def replay(self, recorded: bytes) -> None:
        """Send a closed connection's client bytes again on a new one and count what comes back."""
        try:
            reader, writer = await asyncio.open_connection(*self.upstream_address())
        except OSError:
            return
        self.stats.note("replaying")
        try:
            writer.write(recorded)
            await writer.drain()
            while True:
                data = await asyncio.wait_for(reader.read(CHUNK), 2.0)
                if not data:
                    break
                self.stats.replay_answers += len(data)
        except (OSError, TimeoutError):
            pass
        finally:
            _abort(writer)
            self.stats.replayed += 1  # done: what came back is counted

    def upstream_address(self) -> tuple[str, int]:
        raise NotImplementedError

    async def pump(self, client: tuple, upstream: tuple) -> None:
        self.stats.connections += 1
        await _Link(self, client, upstream).run()

    def close(self) -> None:
        if not self.closing:
            self.loop.call_soon_threadsafe(self.stopping.set)
        super().close()


class FaultProxy(_Pumping):
    """Listens on 127.0.0.1:``port`` (free by default) and forwards to ``upstream`` under ``faults``."""

    def __init__(self, upstream: tuple[str, int], faults: Faults | None = None) -> None:
        super().__init__(faults)
        self.upstream = upstream

    async def handle(self, reader, writer) -> None:
        upstream = await asyncio.open_connection(*self.upstream)
        await self.pump((reader, writer), upstream)

    def upstream_address(self) -> tuple[str, int]:
        return self.upstream


async def _read_connect(reader: asyncio.StreamReader) -> tuple[str, int] | None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(request) != 3 or request[0] != "CONNECT":
        return None
    host, _, port = request[1].rpartition(":")
    return host.strip("[]"), int(port)


class ConnectProxy(_Pumping):
    """An explicit HTTPS proxy (CONNECT); only to loopback. ``connects``: every host:port asked for.

    ``route`` maps a "host:port" asked for to where the proxy really connects: the coordinator reachable
    only through the proxy, as on a hospital network where nothing else gets out."""

    def __init__(self, faults: Faults | None = None, *, refuse: str | None = None,
                 route: dict[str, tuple[str, int]] | None = None) -> None:
        super().__init__(faults)
        self.refuse = refuse  # e.g. "403 Forbidden": a proxy whose policy blocks the coordinator
        self.route = dict(route or {})
        self.connects: list[str] = []
        self.refused = 0

    async def handle(self, reader, writer) -> None:
        target = await _read_connect(reader)
        if target is None:
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        self.connects.append(f"{target[0]}:{target[1]}")
        if self.refuse or target[0] not in ("127.0.0.1", "localhost", "::1"):
            self.refused += 1
            writer.write(f"HTTP/1.1 {self.refuse or '403 Forbidden'}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return
        upstream = await asyncio.open_connection(*self.route.get(self.connects[-1], target))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await self.pump((reader, writer), upstream)


class InspectingProxy(_Pumping):
    """A CONNECT proxy that decrypts: its own CA signs a certificate for each host asked for (made on the
    fly), and it re-encrypts to the coordinator (trusting ``upstream_ca``, as such boxes trust theirs).

    ``handshakes``: TLS handshakes hospitals began with it; ``intercepted``: those that succeeded (the
    client trusted the inspection CA); ``plaintext``: request bytes it read in the clear."""

    def __init__(self, upstream_ca: Path) -> None:
        super().__init__(None)
        self.upstream_ca = Path(upstream_ca)
        self._folder = tempfile.TemporaryDirectory(prefix="tls-inspection-")
        self.ca_file: Path | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.connects: list[str] = []
        self.handshakes = 0
        self.intercepted = 0

    def _context_for(self, host: str) -> ssl.SSLContext:
        from core.federation.tls import write_federation_tls

        if host not in self._contexts:
            # A fresh "corporate inspection CA" and a leaf for exactly the host the hospital asked for.
            files = write_federation_tls(Path(self._folder.name) / host.replace(":", "_"),
                                         name="Hospital IT TLS inspection", hosts=[host])
            self.ca_file = files.ca_cert
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(files.server_cert, files.server_key)
            self._contexts[host] = context
        return self._contexts[host]

    async def handle(self, reader, writer) -> None:
        target = await _read_connect(reader)
        if target is None:
            return
        self.connects.append(f"{target[0]}:{target[1]}")
        context = self._context_for(target[0])
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        self.handshakes += 1
        await writer.start_tls(context)  # ssl.SSLError when the hospital refuses our certificate
        self.intercepted += 1
        upstream_context = ssl.create_default_context(cafile=str(self.upstream_ca))
        upstream = await asyncio.open_connection(*target, ssl=upstream_context, server_hostname=target[0])
        await self.pump((reader, writer), upstream)

    @property
    def plaintext(self) -> int:
        return self.stats.bytes_up

    def close(self) -> None:
        super().close()
        self._folder.cleanup()

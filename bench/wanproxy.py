"""A userspace WAN emulator: a TCP proxy that adds latency and caps each connection's rate.

Why it exists: the issue asks for `tc netem` (40 ms RTT) and `tc fq maxrate` (10 MB/s per
connection), but a kernel built without CONFIG_NET_SCH_NETEM / CONFIG_NET_SCH_FQ (this
machine's) refuses both qdiscs. `wan.py` uses tc when the kernel has it and falls back to
this proxy, run inside the benchmark's network namespace in front of the S3 server.

Model, per accepted connection (client = mounter, server = S3):

    client ──(delay)──────────────────────► server     requests: one-way delay only
    client ◄──(delay)──(rate cap, FIFO)──── server     responses: serialised at `rate`,
                                                        then delayed

* A chunk pushed at time t into a direction leaves the "wire" at
  `done = max(t, busy_until) + len / rate` (a FIFO link of that rate) and is delivered at
  `done + delay`.
* Connection setup costs one RTT, as a TCP handshake would: the first request bytes are not
  delivered before `accept + 2 * delay + delay`.
* Flow control stands in for the TCP window: a direction holds at most `_HIGH_WATER` bytes in
  flight; above that it stops reading from its source until it drains below half of it, and it
  also stops while the destination socket's own buffer is full.
* An uplink shared by every connection (`--total-rate`, the fleet simulation's): responses of
  all connections also queue, in arrival order, on one FIFO `Link` of that rate. The window of
  each connection is then its share of the link's budget (`_LINK_BUDGET`, or `_LINK_QUEUE_S`
  of a slower link's rate; at least `_MIN_SHARE`, less on a slower link), so the link holds a
  few bandwidth-delay products in all and a new connection's first bytes do not wait behind
  seconds of the others'. Every decision to read again is a connection's own, taken when it
  delivers (a paused connection always has bytes queued, so it always gets there).
* Not modelled: slow start, loss, and fairness between connections beyond arrival order.
* Counted (`--stats FILE`, JSON rewritten every `_STATS_INTERVAL_S` and at exit): the bytes
  servers sent (`down`, the origin's egress), those of them dropped undelivered because their
  client had gone (`dropped`), the bytes clients sent (`up`), and connections.

Usage (foreground; SIGTERM/SIGINT end it):
    python wanproxy.py --listen 10.0.0.2:8334 --target 10.0.0.2:8333 --delay-ms 20 \
        --rate 10000000
    python wanproxy.py --listen 10.0.0.2:8333 --target 10.0.0.2:8334 --delay-ms 20 \
        --total-rate 25000000 --stats /tmp/egress.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys

# Delivery granularity: deliver every chunk due within this window in one write, so the timer
# does not fire once per chunk (asyncio timers are ~1 ms precise anyway).
_TIMER_SLACK_S = 0.0005
# Chunks are split to this size before being scheduled, so a 256 KiB socket read does not
# arrive as one late burst: at 10 MB/s, 64 KiB is 6.5 ms of wire time.
_SLICE_BYTES = 64 * 1024
# In-flight bytes per direction before reading from the source pauses: a bit more than the
# bandwidth-delay product of the default profile (10 MB/s * 40 ms = 400 KB), as a TCP window
# that has grown to fit the path would be.
_HIGH_WATER = 1024 * 1024
_CONNECT_TIMEOUT_S = 10.0
# Queue markers: half-close (shutdown SHUT_WR) or close the sink, in order with the data.
_EOF = "eof"
_CLOSE = "close"
# The shared uplink's queue, all connections together: a few bandwidth-delay products of a
# 200 Mbit/s, 40 ms path (1 MB), split evenly between the connections that share it. A slower
# uplink queues as many seconds, not as many bytes (`_LINK_QUEUE_S` of its rate): 4 MiB on a
# 5 Mbit/s link would be 6.7 s, and a HEAD behind a bulk transfer would wait that long.
_LINK_BUDGET = 4 * 1024 * 1024
_LINK_QUEUE_S = 0.17
_MIN_SHARE = 64 * 1024
_MIN_WINDOW = 8 * 1024
_STATS_INTERVAL_S = 0.5


class Link:
    """An uplink every connection's responses share: FIFO at `rate` bytes/s, and counters."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        # The bytes its lines may hold in all (see `_LINK_QUEUE_S`).
        self.budget = min(_LINK_BUDGET, int(rate * _LINK_QUEUE_S)) if rate else _LINK_BUDGET
        # A line's least window: a slower link's is smaller too, so that tens of lines (a
        # site's parallel fetch, many nodes) still queue well under a second in all.
        self.least = max(_MIN_WINDOW, min(_MIN_SHARE, self.budget // 8))
        self.busy_until = 0.0
        self.queued = 0
        self.down = 0  # bytes the servers sent
        self.up = 0  # bytes the clients sent
        self.dropped = 0  # of `down`: never delivered, their client had gone
        self.connections = 0
        self.lines: set[DelayLine] = set()  # the open lines that share it

    def share(self) -> int:
        """The window of one of its lines: without a shared rate, each connection's own, as
        TCP windows are (idle connections take nothing from the others)."""
        if not self.rate:
            return _HIGH_WATER
        return max(self.least, min(_HIGH_WATER, self.budget // max(1, len(self.lines))))

    def reserve(self, now: float, size: int) -> float:
        """When `size` bytes pushed now leave the link."""
        if self.rate:
            self.busy_until = max(now, self.busy_until) + size / self.rate
            return self.busy_until
        return now

    def stats(self) -> dict[str, int]:
        return {
            "down": self.down,
            "up": self.up,
            "dropped": self.dropped,
            "connections": self.connections,
        }


class DelayLine:
    """One direction of one connection: FIFO at `rate` bytes/s, then `delay` seconds."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        rate: float | None,
        not_before: float,
        link: Link | None = None,
    ) -> None:
        self._loop = loop
        self._delay = delay
        self._rate = rate
        self._link = link  # responses only: the shared uplink
        if link is not None:
            link.lines.add(self)
        self._busy_until = not_before
        self._queue: collections.deque[tuple[float, bytes | str]] = collections.deque()
        self._queued_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sink: asyncio.Transport | None = None
        self._source: asyncio.Transport | None = None
        self._sink_blocked = False
        self._source_paused = False
        self.closed = False

    def attach(self, source: asyncio.Transport, sink: asyncio.Transport) -> None:
        self._source, self._sink = source, sink
        self._reschedule()

    def read_size(self) -> int:
        """How much to read from the source at once: no more than its window (a slow shared
        link's is a few KiB), so a read of 256 KiB does not queue many windows at once."""
        high = _HIGH_WATER if self._link is None else self._link.share()
        return min(_SLICE_BYTES, high)

    def push(self, data: bytes) -> None:
        for start in range(0, len(data), _SLICE_BYTES):
            self._enqueue(data[start : start + _SLICE_BYTES])
        self._update_source_flow()

    def push_eof(self) -> None:
        """Half-close the sink once everything queued before has been delivered."""
        self._enqueue(_EOF)

    def push_close(self) -> None:
        """Close the sink once everything queued before has been delivered."""
        self._enqueue(_CLOSE)

    def set_sink_blocked(self, blocked: bool) -> None:
        self._sink_blocked = blocked
        self._update_source_flow()

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._link is not None:
            self._link.queued -= self._queued_bytes
            self._link.dropped += self._queued_bytes
            self._link.lines.discard(self)
        self._queued_bytes = 0
        self._queue.clear()

    def _enqueue(self, chunk: bytes | str) -> None:
        if self.closed:
            return  # its sink is gone: nothing queued here would ever leave (nor drain a link)
        now = self._loop.time()
        size = len(chunk) if isinstance(chunk, bytes) else 0
        wire_time = size / self._rate if self._rate else 0.0
        self._busy_until = max(now, self._busy_until) + wire_time
        if self._link is not None:
            self._busy_until = max(self._busy_until, self._link.reserve(now, size))
            self._link.queued += size
        self._queue.append((self._busy_until + self._delay, chunk))
        self._queued_bytes += size
        if len(self._queue) == 1:
            self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._queue and self._sink is not None and not self.closed:
            self._timer = self._loop.call_at(self._queue[0][0], self._deliver_due)

    def _deliver_due(self) -> None:
        self._timer = None
        assert self._sink is not None
        deadline = self._loop.time() + _TIMER_SLACK_S
        batch: list[bytes] = []
        marker = ""
        while self._queue and self._queue[0][0] <= deadline:
            _, chunk = self._queue.popleft()
            if isinstance(chunk, str):
                marker = chunk
                break
            batch.append(chunk)
            self._queued_bytes -= len(chunk)
            if self._link is not None:
                self._link.queued -= len(chunk)
        if batch and not self._sink.is_closing():
            self._sink.write(b"".join(batch))
        if marker and not self._sink.is_closing():
            if marker == _EOF and self._sink.can_write_eof():
                self._sink.write_eof()
            else:
                self._sink.close()
        self._update_source_flow()
        self._reschedule()

    def _update_source_flow(self) -> None:
        if self._source is None or self._source.is_closing():
            return
        high = _HIGH_WATER if self._link is None else self._link.share()
        should_pause = self._sink_blocked or self._queued_bytes > high
        should_resume = not self._sink_blocked and self._queued_bytes < high // 2
        if should_pause and not self._source_paused:
            self._source.pause_reading()
            self._source_paused = True
        elif should_resume and self._source_paused:
            self._source.resume_reading()
            self._source_paused = False


class _Side(asyncio.BufferedProtocol):
    """One socket of a proxied pair: what it reads (at most `outbound.read_size()` at a time)
    goes into `outbound`; when its own write buffer fills it blocks `inbound` (the line that
    writes into it)."""

    def __init__(self, outbound: DelayLine, inbound: DelayLine) -> None:
        self.outbound = outbound
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None
        self._buffer = memoryview(bytearray(_SLICE_BYTES))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer[: self.outbound.read_size()]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.outbound.push(data)

    def eof_received(self) -> bool:
        self.outbound.push_eof()
        return True  # keep the socket open for the other direction (half-close)

    def pause_writing(self) -> None:
        self.inbound.set_sink_blocked(True)

    def resume_writing(self) -> None:
        self.inbound.set_sink_blocked(False)

    def connection_lost(self, exc: Exception | None) -> None:
        # Nothing more can be written here; what this side sent still reaches the peer, which
        # is closed after it (an HTTP server may send a response and close at once).
        self.inbound.close()
        self.outbound.push_close()


class _Counted(_Side):
    """A side whose received bytes are counted on the link (`down`: it is the server's)."""

    def __init__(self, outbound: DelayLine, inbound: DelayLine, link: Link, down: bool) -> None:
        super().__init__(outbound, inbound)
        self._link = link
        self._down = down

    def data_received(self, data: bytes) -> None:
        if self._down:
            self._link.down += len(data)
        else:
            self._link.up += len(data)
        super().data_received(data)


class WanProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        delay: float,
        rate: float | None,
        link: Link | None = None,
    ) -> None:
        self._target = (target_host, target_port)
        self._delay = delay
        self._rate = rate
        self.link = link or Link(None)
        self._tasks: set[asyncio.Task[None]] = set()

    def accept(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        self.link.connections += 1
        # Requests wait out the emulated handshake (one RTT) before their own one-way delay.
        to_server = DelayLine(loop, self._delay, None, not_before=accepted + 2 * self._delay)
        to_client = DelayLine(loop, self._delay, self._rate, not_before=accepted, link=self.link)
        client_side = _Counted(to_server, to_client, self.link, down=False)
        task = loop.create_task(self._connect_upstream(client_side, to_server, to_client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client_side

    async def _connect_upstream(
        self, client_side: _Side, to_server: DelayLine, to_client: DelayLine
    ) -> None:
        loop = asyncio.get_running_loop()
        server_side = _Counted(to_client, to_server, self.link, down=True)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: server_side, *self._target), _CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            print(f"wanproxy: upstream connect failed: {exc}", file=sys.stderr)
            if client_side.transport is not None:
                client_side.transport.close()
            return
        assert client_side.transport is not None
        assert server_side.transport is not None
        to_server.attach(source=client_side.transport, sink=server_side.transport)
        to_client.attach(source=server_side.transport, sink=client_side.transport)


def _split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _write_stats(path: str, link: Link) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(link.stats(), file)
    os.replace(temporary, path)


async def _report(path: str, link: Link) -> None:
    while True:
        _write_stats(path, link)
        await asyncio.sleep(_STATS_INTERVAL_S)


async def _serve(args: argparse.Namespace) -> None:
    listen_host, listen_port = _split_address(args.listen)
    target_host, target_port = _split_address(args.target)
    link = Link(args.total_rate or None)
    proxy = WanProxy(target_host, target_port, args.delay_ms / 1000.0, args.rate or None, link)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(proxy.accept, listen_host, listen_port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reporter = loop.create_task(_report(args.stats, link)) if args.stats else None
    print(
        f"wanproxy: {args.listen} -> {args.target}, one-way delay {args.delay_ms} ms, "
        f"{args.rate / 1e6:.1f} MB/s per connection (0: no cap), "
        f"{args.total_rate / 1e6:.1f} MB/s in all (0: no cap)",
        flush=True,
    )
    async with server:
        await stop.wait()
    if reporter is not None:
        reporter.cancel()
        _write_stats(args.stats, link)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", required=True, help="HOST:PORT of the real server")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="server->client bytes/s per connection (0: none)"
    )
    parser.add_argument(
        "--total-rate", type=float, default=0.0, help="server->client bytes/s in all (0: none)"
    )
    parser.add_argument("--stats", metavar="FILE", help="write the byte counters here (JSON)")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

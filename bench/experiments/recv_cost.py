"""Client CPU per GiB of receiving a ranged GET's body: a buffered reader on a socket with a
timeout (what `minihttp` does) against a blocking `recv_into` with MSG_WAITALL (one system
call per 1 MiB block, the kernel waiting for the whole block).

    python bench/experiments/recv_cost.py

16 threads read a 1 GiB object in 8 MiB ranges, 1 MiB at a time, over presigned URLs (no
signing cost), 3 rounds of both ways; prints the rate, the process's CPU seconds and its
context switches. The server's page cache stays warm (not dropped), so the client is what
varies. Starts its own SeaweedFS.
"""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from _common import serving

SIZE, PART, BLOCK, THREADS = 1 << 30, 8 << 20, 1 << 20, 16


def send_get(sock: socket.socket, url: str, start: int, end: int) -> None:
    parts = urlsplit(url)
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Range: bytes={start}-{end - 1}\r\n\r\n"
    )
    sock.sendall(request.encode())


def body_start(sock: socket.socket) -> bytes:
    """Read the answer's head; the bytes of the body that came with it."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert b" 206 " in head.split(b"\r\n")[0], head[:100]
    return rest


def read_buffered(sock: socket.socket, url: str, parts: list[int]) -> int:
    sock.settimeout(60)
    reader = sock.makefile("rb", buffering=65536)
    total = 0
    for part in parts:
        send_get(sock, url, part * PART, (part + 1) * PART)
        while reader.readline() not in (b"\r\n", b""):
            pass
        for _ in range(PART // BLOCK):
            total += len(reader.read(BLOCK))
    return total


def read_waitall(sock: socket.socket, url: str, parts: list[int]) -> int:
    sock.settimeout(None)  # blocking: MSG_WAITALL has no effect on a socket with a timeout
    total = 0
    for part in parts:
        send_get(sock, url, part * PART, (part + 1) * PART)
        early = body_start(sock)
        for _ in range(PART // BLOCK):
            block = bytearray(BLOCK)
            view, got = memoryview(block), len(early)
            view[:got], early = early, b""
            while got < BLOCK:
                count = sock.recv_into(view[got:], BLOCK - got, socket.MSG_WAITALL)
                if count == 0:
                    raise EOFError("the server closed the connection")
                got += count
            total += got
    return total


def one_round(name: str, url: str) -> None:
    reader = {"buffered": read_buffered, "waitall": read_waitall}[name]
    where = urlsplit(url)
    count = SIZE // PART
    totals: list[int] = []

    def work(parts: list[int]) -> None:
        with socket.create_connection((where.hostname, where.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            totals.append(reader(sock, url, parts))

    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    threads = [
        threading.Thread(target=work, args=(list(range(i, count, THREADS)),))
        for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    assert sum(totals) == SIZE, sum(totals)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    switches = after.ru_nvcsw - before.ru_nvcsw + after.ru_nivcsw - before.ru_nivcsw
    print(f"{name:9s} {SIZE / wall / 1e6:5.0f} MB/s, CPU {cpu:.2f} s, {switches} switches")


def main() -> int:
    with serving("big.dat", SIZE) as (server, _work, _remotes):
        params = {"Bucket": "perf", "Key": "big.dat"}
        url = server.client().generate_presigned_url("get_object", Params=params, ExpiresIn=3600)
        for _ in range(3):
            for name in ("buffered", "waitall"):
                one_round(name, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A bounded load of stable-link requests: N requests from C clients, each on its own
keep-alive connection; the latency of each answer (the 302, not the download it points to)."""

from __future__ import annotations

import http.client
import os
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    count: int
    seconds: float
    latencies: list[float]
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def describe(self) -> str:
        return (
            f"{self.count} requests, {len(self.errors)} errors, {self.per_second:.0f} req/s, "
            f"p50 {self.percentile(0.5) * 1000:.1f} ms, p99 {self.percentile(0.99) * 1000:.1f} ms"
        )


def hammer(port: int, path: str, token: str | None, *, requests: int, clients: int) -> LoadResult:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    share = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]

    def client(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        for _ in range(count):
            started = time.perf_counter()
            try:
                connection.request("GET", path, headers=headers)
                answer = connection.getresponse()
                answer.read()
                if answer.status != 302 or not answer.getheader("location"):
                    raise RuntimeError(f"answered {answer.status}")
            except (OSError, http.client.HTTPException, RuntimeError) as exc:
                with lock:
                    errors.append(str(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(count,)) for count in share]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(len(latencies), time.perf_counter() - started, latencies, errors)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

"""A free local port for `--metrics`, and a mount's `/metrics` read back: one gauge as text, or
every sample parsed with prometheus_client's own parser."""

from __future__ import annotations

import re
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


def gauge(port: int, name: str) -> float:
    """The value of the unlabelled metric `name` at http://127.0.0.1:PORT/metrics."""
    found = re.search(rf"^{name} (\S+)$", _text(port), re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


def scrape(port: int) -> tuple[str, Samples]:
    """The text of http://127.0.0.1:PORT/metrics, and its samples by (name, labels)."""
    text = _text(port)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]

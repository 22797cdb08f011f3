"""Small validated value types that cross module boundaries.

`ObjectId` names one *version* of an object (key + ETag): cache keys and If-Match both use it,
so bytes of two versions can never be mixed. `ByteSize` and `Duration` parse CLI strings
("10G", "256M", "60s", "5m").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """'10G' -> 10737418240. Binary units, as rclone's --vfs-cache-max-size."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"invalid size {text!r} (expected e.g. 512M, 10G)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def parse_duration(text: str) -> float:
    """'60s' -> 60.0, '5m' -> 300.0, '1.5' -> 1.5 seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise ConfigError(f"invalid duration {text!r} (expected e.g. 30s, 5m)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit or ""]


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit]:
            return f"{size / _SIZE_UNITS[unit]:.1f}{unit}"
    return f"{size}B"


@dataclass(frozen=True, slots=True)
class ObjectId:
    """One version of one object: the unit of caching and of If-Match."""

    key: str
    etag: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What HEAD or LIST tells about an object."""

    key: str
    size: int
    etag: str
    mtime: float

    @property
    def id(self) -> ObjectId:
        return ObjectId(self.key, self.etag)


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a delimited listing: objects directly under the prefix and sub-prefixes."""

    objects: tuple[ObjectInfo, ...]
    prefixes: tuple[str, ...]
    next_token: str | None

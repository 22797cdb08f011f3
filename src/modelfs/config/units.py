"""Sizes, durations and switches as users write them, on the command line and in config files.

Sizes take binary units, as rclone's `--vfs-cache-max-size` does ("512M", "10G"); durations take
`ms s m h d` ("60s", "5m", a bare number is seconds); switches take true/yes/on/1 and
false/no/off/0. An empty switch value (`env_auth =`, as rclone's own config writer leaves it)
means false, everywhere. Anything else is a `ConfigError` naming the value.
"""

from __future__ import annotations

import re

from modelfs.errors import ConfigError

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", ""})


def parse_size(text: str) -> int:
    """'10G' -> 10737418240."""
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


def parse_bool(text: str, what: str) -> bool:
    """'yes' -> True; `what` names the setting in the error ("[run:x] read-only")."""
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigError(f"{what} = {text!r} is not a boolean (true or false)")


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit]:
            return f"{size / _SIZE_UNITS[unit]:.1f}{unit}"
    return f"{size}B"


def format_duration(seconds: float) -> str:
    """1203 -> '20m 3s', 7500 -> '2h 5m', 42 -> '42s': the two largest units, for people."""
    left = round(abs(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])

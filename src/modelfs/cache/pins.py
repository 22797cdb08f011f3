"""Pinned object versions: blocks the block cache never evicts (`modelfs warm --pin`).

One file per cache root, shared by every process that uses the root:

    <root>/pins.json   {"version": 1, "pins": [{"key": ..., "etag": ..., "size": ...}, ...]}

mode 0600, replaced atomically (a temp file, fsynced, renamed over it), so a reader sees the
old table or the new one, never half of one, and a pin survives a restart or a power loss once
`add` returned. A key is pinned in one version at a time: pinning it again pins the version
given (`modelfs warm --pin` of a file that changed in the bucket moves the pin to the new
version; the old version's blocks are then evicted like any others).

Invariants
- The pinned versions' block files (payloads plus one header per block) fit in the cache:
  `add` refuses, with nothing changed, a table that would hold more than `max_bytes`.
- Changes (`add`, `remove`) are made while the caller holds the cache's ledger
  (`cache.ledger`), which serializes them across processes; readers need no lock: each
  process keeps the last table it read (`refresh` reads the file again when its inode, size or
  mtime changed) and swaps it in as one reference.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from modelfs.cache.blockfile import HEADER_SIZE, BlockName, Stamp, block_name, file_stamp
from modelfs.errors import UsageError
from modelfs.host import private
from modelfs.objects import ObjectId

logger = logging.getLogger("modelfs.cache.disk")

PINS_NAME = "pins.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Pin:
    key: str
    etag: str
    size: int  # the object's size in bytes


@dataclass(frozen=True, slots=True)
class _Table:
    stamp: Stamp | None
    pins: dict[str, Pin]  # by key
    versions: frozenset[tuple[bytes, bytes]]  # (key digest, etag digest) of each pin
    bytes: int  # block file bytes the pins hold


def pinned_file_bytes(size: int, block_size: int) -> int:
    """What an object of `size` bytes takes in the cache: its payload and a header per block."""
    return size + -(-size // block_size) * HEADER_SIZE


class PinsTooLarge(UsageError):
    """Pinning would hold more than the cache may (nothing was pinned)."""

    def __init__(self, adding: int, total: int, max_bytes: int) -> None:
        super().__init__(
            f"cannot pin {adding} more bytes: pinned files would take {total} bytes of a "
            f"{max_bytes}-byte cache"
        )
        self.adding = adding
        self.total = total
        self.max_bytes = max_bytes


class PinTable:
    def __init__(self, root: Path, block_size: int) -> None:
        self.path = root / PINS_NAME
        self._block_size = block_size
        self._table = self._build(None, {})
        self.refresh()

    @property
    def bytes(self) -> int:
        return self._table.bytes

    @property
    def count(self) -> int:
        """Files (object versions) pinned."""
        return len(self._table.pins)

    def pins(self) -> list[Pin]:
        return sorted(self._table.pins.values(), key=lambda pin: pin.key)

    def is_pinned(self, name: BlockName) -> bool:
        return (name.key, name.etag) in self._table.versions

    def refresh(self) -> None:
        """Read the file again if another process (or this one) replaced it."""
        try:
            stamp: Stamp | None = file_stamp(os.stat(self.path))
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            logger.warning("block cache: cannot read %s: %s", self.path, exc)
            return
        if stamp == self._table.stamp:
            return
        pins: dict[str, Pin] = {}
        if stamp is not None:
            try:
                document = json.loads(self.path.read_text(encoding="utf-8"))
                for item in document["pins"]:
                    pin = Pin(str(item["key"]), str(item["etag"]), int(item["size"]))
                    pins[pin.key] = pin
            except FileNotFoundError:
                return  # replaced meanwhile: the next refresh reads the new one
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("block cache: ignoring unreadable %s: %s", self.path, exc)
        self._table = self._build(stamp, pins)

    def add(self, pins: Iterable[Pin], max_bytes: int) -> None:
        """Pin these versions (the caller holds the ledger). PinsTooLarge, and nothing pinned,
        if all the pins together would not fit in `max_bytes`."""
        self.refresh()
        table = dict(self._table.pins)
        table.update((pin.key, pin) for pin in pins)
        wanted = self._build(None, table)
        if wanted.bytes > max_bytes:
            raise PinsTooLarge(wanted.bytes - self._table.bytes, wanted.bytes, max_bytes)
        self._save(table)

    def remove(self, keys: Iterable[str] = (), prefixes: Iterable[str] = ()) -> list[Pin]:
        """Unpin these keys and every key under these prefixes (the caller holds the ledger);
        the pins removed."""
        self.refresh()
        exact, under = set(keys), tuple(prefixes)
        removed = [
            pin for key, pin in self._table.pins.items() if key in exact or key.startswith(under)
        ]
        if removed:
            gone = {pin.key for pin in removed}
            self._save({key: pin for key, pin in self._table.pins.items() if key not in gone})
        return removed

    def _build(self, stamp: Stamp | None, pins: dict[str, Pin]) -> _Table:
        versions = set()
        for pin in pins.values():
            name = block_name(ObjectId(pin.key, pin.etag), 0)
            versions.add((name.key, name.etag))
        total = sum(pinned_file_bytes(pin.size, self._block_size) for pin in pins.values())
        return _Table(stamp, pins, frozenset(versions), total)

    def _save(self, pins: dict[str, Pin]) -> None:
        document = {"version": _VERSION, "pins": [asdict(pins[key]) for key in sorted(pins)]}
        data = json.dumps(document, indent=1).encode()
        private.replace_file(self.path, data, durable=True)
        self._table = self._build(file_stamp(os.stat(self.path)), pins)

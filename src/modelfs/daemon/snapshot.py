"""The metadata snapshot of a mount: the last known listings of its prefix, saved on disk.

Owns the file and its format. One file per cache root (endpoint and bucket) and prefix,
`<cache root>/snapshots/<sha256 of the prefix, 16 hex>.json`, so a mount of another prefix of
the bucket never reads it. A mount saves it while it runs, when its listings changed, and at
unmount; a mount that starts while its store is unreachable loads it and serves it, read-only
(see `daemon.storewatch`).

Invariants:
- private: the directory is 0700 and the file 0600, whatever the umask;
- atomic: written to a temporary file of its own and synced, then renamed over the old one
  (`host.private.replace_file`), so a reader sees a whole snapshot or the previous one;
- bounded: at most `MAX_NAMES` names (files and directories); past that, the directories
  listed longest ago are left out (a directory left out fails as the store does, EIO);
- a file that cannot be read or parsed, or that names another source, is no snapshot.

Format (JSON): {"format": 1, "source", "prefix", "written": epoch seconds,
"dirs": [[path, [directory names], [[file name, size, etag, mtime], ...]], ...]}; an object's
key is its directory's prefix plus its name, rebuilt on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfs.core.namespace import DirListing
from modelfs.host import private
from modelfs.objects import ObjectInfo

log = logging.getLogger(__name__)

FORMAT = 1
MAX_NAMES = 200_000  # ~20 MB of JSON; a large model tree has a few thousand

Listings = list[tuple[str, DirListing]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    written: float  # epoch seconds
    listings: Listings


class SnapshotFile:
    """The snapshot of `prefix` under the cache root `root`, for the mount of `source`."""

    def __init__(self, root: Path, source: str, prefix: str) -> None:
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
        self.path = root / "snapshots" / f"{digest}.json"
        self.source = source
        self.prefix = prefix

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, listings: Listings) -> int:
        """Write `listings` (least recently listed first, as `Namespace.known` gives them);
        the number of directories written."""
        kept: list[Any] = []
        names = 0
        for path, listing in reversed(listings):
            names += len(listing.files) + len(listing.dirs)
            if names > MAX_NAMES:
                left_out = len(listings) - len(kept)
                log.info("snapshot: %d directories left out (over %d names)", left_out, MAX_NAMES)
                break
            files = [[n, i.size, i.etag, i.mtime] for n, i in sorted(listing.files.items())]
            kept.append([path, sorted(listing.dirs), files])
        kept.reverse()
        document = {
            "format": FORMAT,
            "source": self.source,
            "prefix": self.prefix,
            "written": time.time(),
            "dirs": kept,
        }
        private.own_dir(self.path.parent, "snapshot dir")
        data = json.dumps(document, separators=(",", ":")).encode()
        private.replace_file(self.path, data, durable=True)
        return len(kept)

    def load(self, dir_prefix: Callable[[str], str]) -> Snapshot | None:
        """The saved snapshot, or None (with a warning if a file is there but unusable).
        `dir_prefix(path)`: the key prefix of a directory (`Namespace.dir_prefix`)."""
        try:
            document = json.loads(self.path.read_bytes())
            if document.get("format") != FORMAT or document.get("source") != self.source:
                raise ValueError(f"not a snapshot of {self.source}")
            listings: Listings = []
            for path, dirs, files in document["dirs"]:
                base = dir_prefix(path)
                infos = {
                    name: ObjectInfo(base + name, int(size), str(etag), float(mtime))
                    for name, size, etag, mtime in files
                }
                listings.append((str(path), DirListing(infos, frozenset(map(str, dirs)))))
            return Snapshot(float(document["written"]), listings)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring the metadata snapshot %s: %s", self.path, exc)
            return None

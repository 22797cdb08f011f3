"""Bearer tokens of the link service: a file of tokens, re-read when it changes.

The file holds one token per line (blank lines and `#` comments ignored; a token may be
followed by whitespace and a label, which is never logged either). Adding a line grants, and
removing it revokes, within `recheck` seconds and without a restart: the file's mtime, size and
inode are checked at most that often, and the file is re-read when any changed. A token is
compared with every allowed one in constant time (`hmac.compare_digest`), so the answer's
timing says nothing about how much of a guess was right.

An unreadable file (gone, no permission) denies every request until it is readable again:
failing closed. A file that group or others can read gets a warning at load, as ssh does.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_RECHECK = 1.0  # seconds between two looks at the file


class TokenFile:
    def __init__(
        self, path: Path, *, recheck: float = _RECHECK, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._recheck = recheck
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._checked = -recheck
        self._reload()

    def allows(self, presented: str) -> bool:
        """Whether `presented` is one of the tokens in the file now."""
        self._maybe_reload()
        candidate = presented.encode()
        found = False
        for token in self._tokens:  # no early exit: every token costs the same
            found = hmac.compare_digest(candidate, token) or found
        return found

    def _maybe_reload(self) -> None:
        now = self._clock()
        with self._lock:
            if now - self._checked < self._recheck:
                return
            self._checked = now
        self._reload()

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if self._tokens or self._stamp is not None:
                log.warning("token file %s unreadable (%s): denying every request", self.path, exc)
            self._tokens, self._stamp = (), None
            return
        if stat.st_mode & 0o077:
            log.warning("token file %s can be read by other users: chmod 600 it", self.path)
        tokens = []
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if words:
                tokens.append(words[0].encode())
        with self._lock:
            self._tokens, self._stamp = tuple(tokens), stamp
        log.info("token file %s: %d token(s)", self.path, len(tokens))


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if that is what it is."""
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None

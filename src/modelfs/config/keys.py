"""The keys of a remote, re-read from its config file when the file changes.

Keys in a config file may be rotated while a mount runs (temporary keys with a session token,
written anew by whatever issues them). `KeyFile.current` answers the remote as its file holds
it now: it looks at the file (inode, size, mtime: one `stat`) at most once per `interval`,
re-reads it only when one of them changed, and returns the last good remote otherwise. A file
that is gone, cannot be parsed, or no longer has the remote's keys keeps the last good keys,
with one warning until it is readable again. A symlink is followed at every look, so a
swapped link (as Kubernetes updates a mounted secret) counts as a change. `generation`
counts the changes of keys read so far (a watcher compares it to see new keys arrived).

Thread safe: `_lock` guards which thread looks next and the swap of the result, never the
file I/O. The returned `RemoteConfig` is immutable; secrets never reach a log line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from modelfs.config.files import remotes_in
from modelfs.config.remote import RemoteConfig, mask_key_id
from modelfs.errors import ConfigError

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between two looks at the file

_Stamp = tuple[int, int, int]  # inode, size, mtime in ns


class KeyFile:
    """See the module docstring. `remote` must have keys and a `config_file`."""

    def __init__(
        self,
        remote: RemoteConfig,
        *,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._remote = remote
        self._path = Path(remote.config_file)
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_look = clock() + interval
        self._stamp: _Stamp | None = None  # the first look reads the file: it may have changed
        self._warned = False
        self.generation = 0

    def current(self) -> RemoteConfig:
        """The remote with its keys as the file holds them now (see the module docstring)."""
        now = self._clock()
        with self._lock:
            if now < self._next_look:
                return self._remote
            self._next_look = now + self._interval
        stamp = _stamp_of(self._path)
        if stamp is None or stamp == self._stamp:
            if stamp is None:
                self._warn(f"config file {self._path} is gone")
            return self._remote
        try:
            remote = remotes_in(self._path).get(self._remote.name)
        except ConfigError as exc:
            self._warn(str(exc))
            return self._remote
        if remote is None or remote.uses_default_credentials or not remote.secret_access_key:
            self._warn(f"remote {self._remote.name!r} has no keys in {self._path} any more")
            return self._remote
        with self._lock:
            self._stamp, old = stamp, self._remote
            self._remote = remote
            self._warned = False
        if _keys(remote) != _keys(old):
            self.generation += 1
            log.info(
                "remote %r: new keys from %s (access_key_id %s)",
                remote.name,
                self._path,
                mask_key_id(remote.access_key_id),
            )
        return remote

    def _warn(self, problem: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s; keeping the keys read before", problem)


def _keys(remote: RemoteConfig) -> tuple[str, str, str]:
    return remote.access_key_id, remote.secret_access_key, remote.session_token


def _stamp_of(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns

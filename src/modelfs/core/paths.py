"""Mapping between S3 keys and paths inside the mount.

A key maps to a path only if every '/'-separated segment is a usable file name: not empty, not
'.' or '..', no NUL byte, at most 255 bytes in UTF-8 (NAME_MAX). Anything else is skipped with
one warning per key, so a hostile or odd bucket can never make a name that escapes the mount.
A name the mount is asked to make must be such a segment, and its key at most 1024 bytes
(S3's limit): else EINVAL or ENAMETOOLONG at once, not an upload that fails later.
"""

from __future__ import annotations

import logging

from modelfs.errors import NameTooLong

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes per path segment, as Linux enforces for every name
KEY_MAX = 1024  # bytes of UTF-8 per S3 key: a longer one is refused by S3 (KeyTooLongError)
WARNED_KEYS_MAX = 10_000  # keys warned about by name; the rest are skipped quietly
_warned: set[str] = set()


def valid_segment(name: str) -> bool:
    """A usable path segment. A name the kernel passed as bytes that are not UTF-8 (decoded
    with surrogateescape by the FUSE adapter) is not: S3 keys are UTF-8, and such a key would
    fail in every request (EINVAL when it is made, not EIO and a traceback at upload)."""
    if name in ("", ".", "..") or "\0" in name or "/" in name:
        return False
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(encoded) <= NAME_MAX


def check_key_length(key: str) -> None:
    """NameTooLong (ENAMETOOLONG) for a key S3 would refuse: caught when the name is made, not
    by an upload that could never succeed."""
    length = len(key.encode("utf-8", "surrogateescape"))  # (a valid name is UTF-8 already)
    if length > KEY_MAX:
        raise NameTooLong(f"{key[:40]}...: its key is {length} bytes; S3 allows {KEY_MAX}")


def warn_skipped(key: str) -> None:
    """One warning per key, for the first WARNED_KEYS_MAX keys; then one line saying so (a
    bucket of millions of odd keys must not grow the set, nor the log, without bound)."""
    if key in _warned or len(_warned) > WARNED_KEYS_MAX:
        return
    _warned.add(key)
    if len(_warned) > WARNED_KEYS_MAX:
        log.warning("more keys cannot be paths; skipping them without a warning each")
        return
    log.warning("skipping key %r: it cannot be a path (empty, '.', '..', NUL or >255 bytes)", key)


def join(directory: str, name: str) -> str:
    """Path of `name` in `directory`; paths are relative to the mount root, '' is the root."""
    return f"{directory}/{name}" if directory else name


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def name_of(path: str) -> str:
    return path.rpartition("/")[2]

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
_warned: set[str] = set()


def valid_segment(name: str) -> bool:
    if name in ("", ".", "..") or "\0" in name or "/" in name:
        return False
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return len(encoded) <= NAME_MAX


def check_key_length(key: str) -> None:
    """NameTooLong (ENAMETOOLONG) for a key S3 would refuse: caught when the name is made, not
    by an upload that could never succeed."""
    length = len(key.encode("utf-8", "surrogateescape"))
    if length > KEY_MAX:
        raise NameTooLong(f"{key[:40]}...: its key is {length} bytes; S3 allows {KEY_MAX}")


def warn_skipped(key: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(
            "skipping key %r: it cannot be a path (empty, '.', '..', NUL or >255 bytes)", key
        )


def join(directory: str, name: str) -> str:
    """Path of `name` in `directory`; paths are relative to the mount root, '' is the root."""
    return f"{directory}/{name}" if directory else name


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def name_of(path: str) -> str:
    return path.rpartition("/")[2]

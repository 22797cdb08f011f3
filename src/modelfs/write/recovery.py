"""Recovery: the journal rows an earlier process left become staged files again.

Owns what a new engine finds on disk. Every row is pending work, queued before anything else; a
row whose staging file is gone is reported lost and dropped; staging files no row names are
removed.

After the death of modelfs alone (kill -9, OOM; the journal's boot is this boot, see
`durable`), the page cache still holds every write, so each staging file is trusted as it is,
fsynced or not.

After a reboot (a power loss, a kernel crash, or any reboot: the journal's boot is another
one), only what an fsync made durable is trusted. Each staging file is compared with the synced
state its row records (`durable.verdict`):
- INTACT, exactly what was synced: uploaded as usual;
- GREW, what was synced and bytes after it that no fsync covered: the whole file is copied to a
  new conflict copy, then cut back to what was synced, which is uploaded under its name;
- TORN, anything else (never synced, shorter, other bytes): the file becomes a conflict copy;
  the bucket's object keeps the name.
A conflict copy is a new staged file named `KEY.conflict-<UTC stamp>` (`uploader.conflict_key`,
the one naming of conflicts), uploaded as a new file: never over an object of that name (the
conflict rule then names another). A warning names the key and its copy.

Order, so that a crash in the middle of recovery repeats it rather than trusting a torn file:
a copy is fsynced and journaled, and the journal synced, before the original is cut back; the
boot is recorded last, after the journal is synced. A repeat may make a second conflict copy of
the same bytes; it never puts a torn file over its object.

Runs once, in the engine's constructor, before the upload queue or the mount can see the table.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

from modelfs.errors import NoSpace
from modelfs.write import durable, staging
from modelfs.write.durable import Digests, Verdict
from modelfs.write.files import StagedFile, StagedFiles
from modelfs.write.journal import JournalRow, Synced
from modelfs.write.uploader import conflict_key

log = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20


def recover(files: StagedFiles, boot: str, wall_clock: Callable[[], float]) -> list[StagedFile]:
    """Stage every file the journal names (see the module docstring); the caller queues them
    first. `boot` is this boot (`host.boot.current_boot()`)."""
    journal = files.journal
    found: list[tuple[JournalRow, StagedFile]] = []
    for row in journal.rows():
        fd = files.area.open(row.staging)
        if fd is None:
            log.error("write-back: staging file of %s is gone; its changes are lost", row.key)
            journal.delete(row.staging)
            continue
        found.append((row, _staged(row, fd)))
    for name in files.area.sweep({file.staging for _, file in found}):
        log.debug("write-back: removed stale staging file %s", name)
    recovered = [file for _, file in found]
    if journal.boot() != boot:
        if found:
            recovered = _after_reboot(files, found, wall_clock())
            journal.sync()
        journal.set_boot(boot)
    for file in recovered:
        files.add(file)
    return recovered


def _staged(row: JournalRow, fd: int) -> StagedFile:
    stat = os.fstat(fd)
    return StagedFile(
        row.staging,
        fd,
        row.key,
        row.base_etag,
        stat.st_size,
        stat.st_mtime,
        generation=1,
        journaled=True,
        dirty_wall=row.since,
        dirty_since=-math.inf,
        leftover_upload=row.upload,
        ours=row.ours,
    )


def _after_reboot(
    files: StagedFiles, found: list[tuple[JournalRow, StagedFile]], now: float
) -> list[StagedFile]:
    taken = {row.key for row, _ in found}

    def aside(key: str) -> str:
        number = 1
        while (name := conflict_key(key, now, number)) in taken:
            number += 1
        taken.add(name)
        return name

    recovered: list[StagedFile] = []
    for row, file in found:
        recovered.extend(_check(files, row, file, aside))
    return recovered


def _check(
    files: StagedFiles, row: JournalRow, file: StagedFile, aside: Callable[[str], str]
) -> list[StagedFile]:
    """The staged files one row becomes after a reboot."""
    verdict, digests = durable.verdict(file.fd, file.size, row.synced)
    if verdict is Verdict.INTACT:
        assert digests is not None
        _trust(file, digests)
        return [file]
    if verdict is Verdict.GREW:
        assert digests is not None
        assert row.synced is not None
        copy_key = aside(row.key)
        try:
            copy = _copy_to(files, file, copy_key)
        except NoSpace:
            log.warning("write-back: no room on the cache disk to split %s", row.key)
        else:
            _cut_back(file, row.synced, digests)
            log.warning(
                "write-back: after a reboot, %s holds %d bytes after what was last fsynced "
                "(%d bytes), which a power loss may have torn: uploading what was fsynced as "
                "%s and the whole local copy as %s",
                row.key,
                copy.size - row.synced.size,
                row.synced.size,
                row.key,
                copy_key,
            )
            return [file, copy]
    else:
        copy_key = aside(row.key)
    _set_aside(files, file, copy_key)
    log.warning(
        "write-back: after a reboot, the local copy of %s is not what was last fsynced (%s): "
        "a power loss may have torn it; the bucket's %s stays, the local copy goes to %s",
        row.key,
        "never fsynced" if row.synced is None else f"{row.synced.size} bytes then",
        row.key,
        copy_key,
    )
    return [file]


def _trust(file: StagedFile, digests: Digests) -> None:
    """`file` matches its row's synced state: the digests are current, nothing to re-sync."""
    file.digests = digests
    file.synced_generation = file.generation


def _set_aside(files: StagedFiles, file: StagedFile, key: str) -> None:
    """`file` becomes a new file `key`, its bytes as found now (durable: read after the
    reboot) recorded as synced."""
    digests, digest = durable.digests_of(file.fd, file.size)
    os.fsync(file.fd)
    files.journal.move(JournalRow(file.staging, key, None, file.leftover_upload, file.dirty_wall))
    files.journal.set_synced(file.staging, Synced(file.size, digest))
    file.key, file.base_etag, file.ours = key, None, None
    _trust(file, digests)


def _copy_to(files: StagedFiles, file: StagedFile, key: str) -> StagedFile:
    """A new staged file `key` holding all of `file`'s bytes, fsynced and journaled."""
    name, fd = files.area.create()
    try:
        for offset in range(0, file.size, _COPY_CHUNK):
            chunk = staging.read_at(file.fd, offset, _COPY_CHUNK)
            if staging.write_at(fd, offset, chunk) < len(chunk):
                raise NoSpace(f"no room to copy {key}")
        digests, digest = durable.digests_of(fd, file.size)
        os.fsync(fd)
        files.area.fsync_dir()
        row = JournalRow(name, key, None, None, file.dirty_wall, synced=Synced(file.size, digest))
        files.journal.insert(row, reserve=True)
        files.journal.sync()
    except BaseException:
        os.close(fd)
        files.area.remove(name)
        raise
    copy = _staged(row, fd)
    copy.dir_synced = True
    _trust(copy, digests)
    return copy


def _cut_back(file: StagedFile, synced: Synced, digests: Digests) -> None:
    """Cut `file` back to what was synced (its copy is journaled: nothing is lost)."""
    os.ftruncate(file.fd, synced.size)
    os.fsync(file.fd)
    file.size = synced.size
    _trust(file, digests)

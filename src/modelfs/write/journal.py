"""The write-back journal: which keys hold local changes the bucket does not have yet.

Owns one SQLite database, `ROOT/journal.sqlite3`, with one row per dirty key. A row exists
exactly while the staging file named in it may hold bytes that are not in the bucket; it is
written before the first changed byte of a dirty cycle reaches the staging file and deleted once
the upload of the last change has completed. At startup every row is pending work.

    dirty(staging TEXT PRIMARY KEY,  -- file name under ROOT/staging/
          key TEXT UNIQUE,           -- full S3 key the content belongs to
          base_etag TEXT,            -- ETag our changes started from; NULL = key was absent
          upload_key TEXT,           -- multipart upload in flight: its key (ours, or a
          upload_id TEXT,            --   conflict copy's) and id, '' while being created
          since REAL,                -- wall-clock time the key became dirty (for status)
          ours TEXT,                 -- ETag our upload in flight gives the key once it lands
          synced_size INTEGER,       -- what the last fsync of the staging file made durable:
          synced_digest TEXT)        --   its size and `durable` digest; NULL = never synced
    deletes(key TEXT PRIMARY KEY)    -- bucket keys a rename must still remove (retried)
    meta(name TEXT PRIMARY KEY, value TEXT)   -- 'identity': the bucket this root belongs to;
                                              -- 'boot': the boot its rows were last checked in

The identity is the cache root's, `ENDPOINT|BUCKET` (a mount passes it): a mount of another
prefix of the bucket may take over a journal (keys are full bucket keys). A journal of another
bucket is refused. Journals written before held `REMOTE:BUCKET[/PREFIX]`; one of the same
bucket is taken over (its identity rewritten).

Why SQLite and not an append-only log file: a row changes in place (rename, new base ETag,
upload id), and SQLite gives atomic multi-row transactions (rename over a dirty key deletes one
row and rekeys another) and crash safety without a compaction step of our own. It is in the
standard library; `diskcache` would add pickling and eviction we must not have.

A full cache disk: `ROOT/journal.reserve` holds a little preallocated space. Once the disk is
full, the bookkeeping that lets an upload finish (and so free its staging file) deletes the
reserve and retries; starting a new dirty file never does, so the application gets ENOSPC
while uploads still drain. The reserve is recreated when space comes back.

Durability: WAL mode with `synchronous=NORMAL`. A commit is a write() into the WAL, so it costs
microseconds and runs on the trio thread; it survives the death of the process (the kernel
keeps the page cache) but not a power loss. `sync()` (called by fsync, in a worker thread)
fsyncs the WAL and the database file: every commit so far is then in one of them, because in
this mode SQLite syncs the WAL before a checkpoint copies it into the database and syncs the
database after. After `sync()` returns, every earlier commit survives a power loss too, and so
do the directory entries of the database and its WAL (SQLite syncs neither when it creates
them, and a WAL is created anew after the last connection closed).

So after a power loss a row may survive while its staging file lost what was written after its
last fsync: the row's synced state and the 'boot' record say what recovery may trust (see
`durable` and `recovery`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelfs.errors import ConfigError, NoSpace
from modelfs.host import private
from modelfs.store.protocol import PendingUpload

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.sqlite3"

RESERVE_NAME = "journal.reserve"

# Rows are ~200 bytes: a 64-page (256 KiB) WAL between checkpoints is plenty, and keeping it
# small leaves room for it on a nearly full cache disk.
_WAL_AUTOCHECKPOINT_PAGES = 64
# The reserve: space only the bookkeeping of uploads may use once the disk is full (an upload
# that cannot journal its end can never free the space its staging file holds). One WAL cycle
# is far more than the few commits that takes; on tiny disks at most 1/8 of the disk.
_RESERVE_BYTES = _WAL_AUTOCHECKPOINT_PAGES * 4096
_RESERVE_FRACTION = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dirty (
    staging TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    base_etag TEXT,
    upload_key TEXT,
    upload_id TEXT,
    since REAL NOT NULL,
    ours TEXT,
    synced_size INTEGER,
    synced_digest TEXT
);
CREATE TABLE IF NOT EXISTS deletes (key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


_COLUMNS = "staging, key, base_etag, upload_key, upload_id, since, ours, synced_size, synced_digest"
_PLACES = ", ".join("?" * len(_COLUMNS.split(", ")))
_ADDED_COLUMNS = {"ours": "TEXT", "synced_size": "INTEGER", "synced_digest": "TEXT"}

RowValues = tuple[
    str, str, str | None, str | None, str | None, float, str | None, int | None, str | None
]


@dataclass(frozen=True, slots=True)
class Synced:
    """What an fsync made durable of a staging file: its size then and the digest of those
    bytes (`durable.Digests`)."""

    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class JournalRow:
    staging: str
    key: str
    base_etag: str | None
    upload: PendingUpload | None
    since: float
    ours: str | None = None
    synced: Synced | None = None

    def values(self) -> RowValues:
        upload_key = self.upload.key if self.upload else None
        upload_id = self.upload.upload_id if self.upload else None
        synced_size = self.synced.size if self.synced else None
        synced_digest = self.synced.digest if self.synced else None
        return (
            self.staging,
            self.key,
            self.base_etag,
            upload_key,
            upload_id,
            self.since,
            self.ours,
            synced_size,
            synced_digest,
        )

    @classmethod
    def of(cls, values: RowValues) -> JournalRow:
        staging, key, base, upload_key, upload_id, since, ours, size, digest = values
        upload = PendingUpload(upload_key, upload_id or "") if upload_key else None
        synced = Synced(size, digest) if size is not None and digest is not None else None
        return cls(staging, key, base, upload, since, ours, synced)


def _legacy_of_same_bucket(found: str, identity: str) -> bool:
    """`found` is an identity from before `ENDPOINT|BUCKET` (`REMOTE:BUCKET[/PREFIX]`) of the
    bucket `identity` names."""
    if "|" in found or "|" not in identity:
        return False
    return found.partition(":")[2].partition("/")[0] == identity.rpartition("|")[2]


def _make_private(path: Path) -> None:
    """The database 0600 before SQLite opens it: SQLite creates its -wal and -shm files with
    the database's mode. Those an older version left wider are narrowed too."""
    os.close(private.open_owned(path, os.O_RDWR))
    for suffix in ("-wal", "-shm"):
        private.narrow(path.with_name(path.name + suffix))


class Journal:
    """The dirty-key table. Methods other than `sync` run on one thread (the trio thread)."""

    def __init__(self, root: Path, *, identity: str | None = None) -> None:
        self._path = root / JOURNAL_NAME
        self._reserve = root / RESERVE_NAME
        _make_private(self._path)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        self._write(lambda db: db.executescript(_SCHEMA))
        self._upgrade()
        if identity is not None:
            self._check_identity(identity)
        self.restore_reserve()

    def _upgrade(self) -> None:
        """Journals written before a column get it, empty: no upload in flight, never synced
        (and no 'boot': recovery checks their rows, see `recovery`)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(dirty)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in columns:
                self._add_column(name, kind)

    def _add_column(self, name: str, kind: str) -> None:
        self._write(lambda db: db.execute(f"ALTER TABLE dirty ADD COLUMN {name} {kind}"))

    def _check_identity(self, identity: str) -> None:
        found = self._db.execute("SELECT value FROM meta WHERE name='identity'").fetchone()
        if found is not None and found[0] == identity:
            return
        if found is not None and not _legacy_of_same_bucket(found[0], identity):
            raise ConfigError(
                f"write-back journal belongs to {found[0]!r}, not {identity!r}: "
                "use another cache dir"
            )
        self._write(
            lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (identity,))
        )

    def rows(self) -> list[JournalRow]:
        cursor = self._db.execute(f"SELECT {_COLUMNS} FROM dirty ORDER BY since")
        return [JournalRow.of(values) for values in cursor.fetchall()]

    def insert(self, row: JournalRow, *, reserve: bool = False) -> None:
        """A key became dirty. May not use the reserve (unless `reserve`: recovery): it is what
        lets the application fill the disk further."""
        statement = f"INSERT INTO dirty ({_COLUMNS}) VALUES ({_PLACES})"
        self._write(lambda db: db.execute(statement, row.values()), reserve=reserve)

    def delete(self, staging: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM dirty WHERE staging=?", (staging,)))

    def set_base(self, staging: str, base_etag: str | None) -> None:
        """The bucket holds our upload as `base_etag`: the base of what changed since."""
        self._write(
            lambda db: db.execute(
                "UPDATE dirty SET base_etag=?, ours=NULL WHERE staging=?", (base_etag, staging)
            )
        )

    def set_ours(self, staging: str, etag: str | None) -> None:
        self._write(
            lambda db: db.execute("UPDATE dirty SET ours=? WHERE staging=?", (etag, staging))
        )

    def set_synced(self, staging: str, synced: Synced) -> None:
        """An fsync made `synced` durable (commit this only after that fsync returned)."""
        self._write(
            lambda db: db.execute(
                "UPDATE dirty SET synced_size=?, synced_digest=? WHERE staging=?",
                (synced.size, synced.digest, staging),
            )
        )

    def set_upload(self, staging: str, upload: PendingUpload | None) -> None:
        key, upload_id = (upload.key, upload.upload_id) if upload else (None, None)
        self._write(
            lambda db: db.execute(
                "UPDATE dirty SET upload_key=?, upload_id=? WHERE staging=?",
                (key, upload_id, staging),
            )
        )

    def move(self, row: JournalRow, *, delete_key: str | None = None) -> None:
        """One transaction: `row` (new or existing, by staging name) now holds `row.key`,
        replacing any other row of that key; and `delete_key` is queued for deletion."""

        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM dirty WHERE key=? AND staging<>?", (row.key, row.staging))
            db.execute(
                f"INSERT INTO dirty ({_COLUMNS}) VALUES ({_PLACES}) ON CONFLICT(staging) DO UPDATE "
                "SET key=excluded.key, base_etag=excluded.base_etag, ours=excluded.ours",
                row.values(),
            )
            if delete_key is not None:
                db.execute("INSERT OR IGNORE INTO deletes VALUES (?)", (delete_key,))

        self._write(work, transaction=True)

    def replace(self, staging: str | None, *, delete_key: str) -> None:
        """One transaction: drop the row of `staging` (if any) and queue `delete_key`."""

        def work(db: sqlite3.Connection) -> None:
            if staging is not None:
                db.execute("DELETE FROM dirty WHERE staging=?", (staging,))
            db.execute("INSERT OR IGNORE INTO deletes VALUES (?)", (delete_key,))

        self._write(work, transaction=True)

    def deletes(self) -> list[str]:
        return [key for (key,) in self._db.execute("SELECT key FROM deletes ORDER BY key")]

    def forget_delete(self, key: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM deletes WHERE key=?", (key,)))

    def boot(self) -> str | None:
        """The boot the rows were last checked in (None: never, a journal from before)."""
        found = self._db.execute("SELECT value FROM meta WHERE name='boot'").fetchone()
        return None if found is None else str(found[0])

    def set_boot(self, boot: str) -> None:
        self._write(
            lambda db: db.execute(
                "INSERT INTO meta VALUES ('boot', ?) ON CONFLICT(name) DO UPDATE "
                "SET value=excluded.value",
                (boot,),
            )
        )

    def sync(self) -> None:
        """Make every commit so far survive a power loss (blocking: run it in a thread)."""
        wal = self._path.with_name(self._path.name + "-wal")
        for path in (self._path, wal, self._path.parent):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # no WAL right now: everything is in the (synced) database
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        self._db.close()

    # -- the reserve ---------------------------------------------------------------------------

    @property
    def reserve_used(self) -> bool:
        return not self._reserve.exists()

    def restore_reserve(self) -> None:
        """(Re)create the reserve file if there is room again; never raises."""
        if self._reserve.exists():
            return
        partial = self._reserve.with_name(self._reserve.name + ".tmp")
        try:
            disk = os.statvfs(self._reserve.parent)
            size = min(_RESERVE_BYTES, disk.f_blocks * disk.f_frsize // _RESERVE_FRACTION)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
            os.replace(partial, self._reserve)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(partial)

    def _release_reserve(self) -> bool:
        try:
            os.unlink(self._reserve)
        except FileNotFoundError:
            return False
        log.warning("write-back: cache disk full; using the journal's reserve to finish uploads")
        return True

    # -- writing -------------------------------------------------------------------------------

    def _write(
        self,
        work: Callable[[sqlite3.Connection], object],
        *,
        reserve: bool = True,
        transaction: bool = False,
    ) -> None:
        """Run `work` (in one transaction if asked); on a full disk, free the reserve and try
        once more if `reserve`, else (or if that fails too) raise NoSpace."""
        try:
            self._attempt(work, transaction)
        except NoSpace:
            if not (reserve and self._release_reserve()):
                raise
            self._attempt(work, transaction)

    def _attempt(self, work: Callable[[sqlite3.Connection], object], transaction: bool) -> None:
        try:
            if not transaction:
                work(self._db)
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise NoSpace("write-back journal: no space left on the cache disk") from exc
            raise

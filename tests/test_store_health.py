"""The parts of offline serving and key rotation, without a mount: the store's health and its
guard, the namespace's last known listings, the metadata snapshot, the key file
(docs/semantics.md, "When the store is down" and "Credentials"; the mounts are in
tests/test_offline.py and tests/test_credentials.py)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import trio

from fakes.memstore import MemoryStore
from modelfs.config.files import remotes_in
from modelfs.config.keys import KeyFile
from modelfs.core.namespace import Namespace
from modelfs.daemon import snapshot as snapshot_module
from modelfs.daemon.snapshot import SnapshotFile
from modelfs.errors import AccessDenied, NotFound, StoreOffline, StoreUnavailable
from modelfs.store.guarded import GuardedStore
from modelfs.store.health import StoreHealth, StoreState, StoreStatistics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health_and_clock(
    *, probe_interval: float = 2.0, stall_after: float = 15.0
) -> tuple[StoreHealth, Clock]:
    clock = Clock()
    health = StoreHealth(clock=clock, probe_interval=probe_interval, stall_after=stall_after)
    return health, clock


# -- the store's health --------------------------------------------------------------------


def test_a_failed_request_alone_changes_nothing_a_failed_probe_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health, clock = health_and_clock(probe_interval=2.0)
    assert not health.probe_due()
    health.failed(StoreUnavailable("503 after retries"))
    assert health.state is StoreState.ONLINE
    health.gate()  # requests still go out
    assert health.probe_due()
    health.probed(None)  # the bucket answers: a storm on one key, say
    assert health.state is StoreState.ONLINE
    clock.now += 2.0
    assert not health.probe_due()
    health.failed(StoreUnavailable("connection refused"))
    health.probed(StoreUnavailable("connection refused"))
    assert health.state is StoreState.OFFLINE
    with pytest.raises(StoreOffline, match="connection refused"):
        health.gate()
    assert not health.probe_due()
    clock.now += 2.0
    assert health.probe_due()  # every probe_interval while offline
    health.probed(StoreUnavailable("connection refused"))
    clock.now += 2.0
    health.probed(None)
    assert health.state is StoreState.ONLINE
    health.gate()
    lines = [record.getMessage() for record in caplog.records]
    assert sum("store unreachable" in line for line in lines) == 1
    assert sum("store reachable again" in line for line in lines) == 1


def test_refused_keys_need_a_refusing_bucket_and_end_with_any_answer() -> None:
    health, _ = health_and_clock()
    health.failed(AccessDenied("AccessDenied on one key"))
    health.probed(None)  # a policy on that key: the bucket answers
    assert health.state is StoreState.ONLINE
    health.failed(AccessDenied("InvalidAccessKeyId"))
    health.probed(AccessDenied("InvalidAccessKeyId"))
    assert health.state is StoreState.REFUSED
    assert health.statistics().reason == "InvalidAccessKeyId"
    health.gate()  # requests still go out: new keys may work
    health.failed(NotFound("no such key"))  # an answer
    assert health.state is StoreState.ONLINE
    assert health.statistics() == StoreStatistics("online", None, None)
    assert health.renewals == 1  # the daemon tries the uploads refused before once more


def test_a_request_without_an_answer_for_long_asks_for_a_probe() -> None:
    health, clock = health_and_clock(stall_after=15.0)
    clock.now += 100.0  # idle time is no stall
    health.started()
    clock.now += 10.0
    assert not health.probe_due()
    health.answered()  # a chunk of a long GET
    clock.now += 10.0
    assert not health.probe_due()
    clock.now += 6.0
    assert health.probe_due()
    health.finished()
    assert not health.probe_due()


def test_a_mount_started_offline_is_offline_without_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = StoreHealth(offline=StoreUnavailable("cannot reach it"))
    assert health.state is StoreState.OFFLINE
    assert health.statistics().reason == "cannot reach it"
    assert caplog.records == []


def test_the_guard_refuses_at_once_while_offline_and_reports_every_outcome() -> None:
    store = MemoryStore()
    store.put_bytes("a", b"abc")
    health, _ = health_and_clock()
    guarded = GuardedStore(store, health)
    store.fail_next("head", StoreUnavailable("reset"))
    with pytest.raises(StoreUnavailable):
        guarded.head("a")
    assert health.probe_due()
    store.fail_next("check_bucket", StoreUnavailable("refused"))
    with pytest.raises(StoreUnavailable):
        guarded.check_bucket()
    assert health.state is StoreState.OFFLINE
    obj = store.head("a").id
    sent = dict(store.ops)
    with pytest.raises(StoreOffline):
        guarded.head("a")
    with pytest.raises(StoreOffline):
        list(guarded.iter_range(obj, 0, 3, 1))
    assert dict(store.ops) == sent  # nothing reached the store
    guarded.check_bucket()
    assert health.state is StoreState.ONLINE
    assert b"".join(guarded.iter_range(obj, 0, 3, 1)) == b"abc"


# -- the namespace's last known listings ----------------------------------------------------


def test_the_last_known_listing_answers_an_unavailable_store_not_a_refusing_one() -> None:
    store = MemoryStore()
    store.put_bytes("m/a.bin", b"a")
    clock = Clock()
    namespace = Namespace(store, "", ttl=1.0, limiter=trio.CapacityLimiter(2), clock=clock)

    async def scenario() -> None:
        first = await namespace.listing("m")
        clock.now += 5.0  # past the TTL
        store.fail_next("list_page", StoreUnavailable("connection refused"))
        assert await namespace.listing("m") == first
        store.fail_next("list_page", StoreUnavailable("connection refused"))
        with pytest.raises(StoreUnavailable):
            await namespace.listing("never-listed")
        store.fail_next("list_page", AccessDenied("403"))
        with pytest.raises(AccessDenied):
            await namespace.listing("m")
        namespace.invalidate("m")
        store.fail_next("list_page", StoreOffline("offline"))
        assert await namespace.listing("m") == first

    trio.run(scenario)
    assert namespace.statistics().served_stale == 2


# -- the metadata snapshot ------------------------------------------------------------------


def listings_of(store: MemoryStore, prefix: str) -> Namespace:
    namespace = Namespace(store, prefix, ttl=60.0, limiter=trio.CapacityLimiter(2))

    async def list_all() -> None:
        await namespace.listing("", subtree=True)

    trio.run(list_all)
    return namespace


def test_a_snapshot_round_trips_private_and_atomic(tmp_path: Path) -> None:
    store = MemoryStore()
    for key in ("p/a.json", "p/d/b.bin", "p/d/e/c.txt"):
        store.put_bytes(key, key.encode())
    saved = listings_of(store, "p/")
    os.umask(0o022)
    snapshot = SnapshotFile(tmp_path / "root", "test:bucket/p", "p/")
    assert snapshot.save(saved.known()) == 3
    assert stat.S_IMODE(snapshot.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(snapshot.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in snapshot.path.parent.iterdir()] == [snapshot.path.name]
    loaded = snapshot.load(saved.dir_prefix)
    assert loaded is not None
    assert dict(loaded.listings) == dict(saved.known())
    assert SnapshotFile(tmp_path / "root", "test:bucket/q", "q/").load(saved.dir_prefix) is None
    other_source = SnapshotFile(tmp_path / "root", "other:bucket/p", "p/")
    assert other_source.load(saved.dir_prefix) is None  # same file, another mount's: ignored
    snapshot.path.write_text("{not json")
    assert snapshot.load(saved.dir_prefix) is None


def test_a_snapshot_keeps_the_directories_listed_last_within_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    for index in range(6):
        store.put_bytes(f"d{index}/f", b"x")
    namespace = listings_of(store, "")
    monkeypatch.setattr(snapshot_module, "MAX_NAMES", 4)
    snapshot = SnapshotFile(tmp_path, "test:bucket", "")
    snapshot.save(namespace.known())
    kept = [entry[0] for entry in json.loads(snapshot.path.read_text())["dirs"]]
    assert kept == [path for path, _ in namespace.known()][-len(kept) :]
    assert 0 < len(kept) < len(namespace.known())


# -- the key file ---------------------------------------------------------------------------


def write_keys(path: Path, key: str, secret: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(
        f"[r]\ntype = s3\naccess_key_id = {key}\nsecret_access_key = {secret}\nendpoint = http://x\n"
    )
    staged.chmod(0o600)  # as keys should be: else a warning (tests/test_private.py)
    os.replace(staged, path)


def test_the_key_file_is_looked_at_once_a_second_and_keeps_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "modelfs.conf"
    write_keys(path, "AKIAFIRSTKEY0000", "first-secret")
    clock = Clock()
    keys = KeyFile(remotes_in(path)["r"], clock=clock)
    write_keys(path, "AKIASECONDKEY000", "second-secret")
    assert keys.current().access_key_id == "AKIAFIRSTKEY0000"  # not looked at yet
    clock.now += 1.0
    assert keys.current().secret_access_key == "second-secret"
    path.write_text("[r\nbroken")
    clock.now += 1.0
    assert keys.current().access_key_id == "AKIASECONDKEY000"
    path.unlink()
    clock.now += 1.0
    assert keys.current().access_key_id == "AKIASECONDKEY000"
    write_keys(path, "AKIATHIRDKEY0000", "third-secret")
    clock.now += 1.0
    assert keys.current().secret_access_key == "third-secret"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "new keys from" in logged
    assert "AKIA****" in logged
    assert "secret" not in logged.replace("secret_access_key", "")
    assert [record.levelno for record in caplog.records] == [
        logging.INFO,  # the second key
        logging.WARNING,  # a broken file (once, gone or not, until it is readable again)
        logging.INFO,  # the third key
    ]

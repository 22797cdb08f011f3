"""`ManifestStore`: a manifest URL's files as a read-only store (what `mount URL` reads)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.errors import NotFound, ReadOnly, StoreUnavailable
from modelfs.objects import ObjectId
from modelfs.pull.manifeststore import ManifestStore, manifest_store
from modelfs.store.sourcespec import SourceSettings
from support.statichttp import StaticHttp

FILES = {
    "model.safetensors": os.urandom(300_000),
    "cfg/config.yaml": b"model: v23\n",
    "cfg/deep/vocab.json": b'{"a": 1}',
    "empty.txt": b"",
}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[StaticHttp]:
    for path, data in FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    entries = [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in FILES.items()
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "t", "files": entries}))
    with StaticHttp(tmp_path) as server:
        yield server


@pytest.fixture
def store(site: StaticHttp) -> ManifestStore:
    return manifest_store(f"{site.url}/manifest.json", None, SourceSettings())


def test_listing_and_head_come_from_the_manifest_without_a_request(
    site: StaticHttp, store: ManifestStore
) -> None:
    asked = len(site.paths)
    top = store.list_page("")
    assert [o.key for o in top.objects] == ["empty.txt", "model.safetensors"]
    assert top.prefixes == ("cfg/",)
    cfg = store.list_page("cfg/")
    assert [o.key for o in cfg.objects] == ["cfg/config.yaml"]
    assert cfg.prefixes == ("cfg/deep/",)
    everything = store.list_page("", recursive=True)
    assert [o.key for o in everything.objects] == sorted(FILES)
    first = store.list_page("", max_keys=1, recursive=True)
    second = store.list_page("", first.next_token, max_keys=10, recursive=True)
    assert [o.key for o in first.objects + second.objects] == sorted(FILES)
    info = store.head("model.safetensors")
    assert info.size == len(FILES["model.safetensors"])
    assert info.etag == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    with pytest.raises(NotFound):
        store.head("nope.bin")
    assert len(site.paths) == asked


def test_reads_are_ranged_and_byte_exact(store: ManifestStore) -> None:
    data = FILES["model.safetensors"]
    version = ObjectId("model.safetensors", "")
    assert store.get_range(version, 1000, 5000) == data[1000:5000]
    chunks = list(store.iter_range(version, 0, len(data), 65536))
    assert b"".join(chunks) == data
    assert all(len(c) == 65536 for c in chunks[:-1])
    with pytest.raises(NotFound):
        store.get_range(ObjectId("nope.bin", ""), 0, 1)


def test_every_write_is_read_only(store: ManifestStore) -> None:
    for attempt in (
        lambda: store.put_bytes("x", b"1"),
        lambda: store.delete("model.safetensors"),
        lambda: store.copy("model.safetensors", "y"),
        lambda: store.create_multipart("x"),
    ):
        with pytest.raises(ReadOnly):
            attempt()


def test_an_unreachable_manifest_url_is_one_clear_error() -> None:
    with pytest.raises(StoreUnavailable):
        manifest_store("http://127.0.0.1:9/manifest.json", None, SourceSettings())

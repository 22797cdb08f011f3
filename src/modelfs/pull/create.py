"""`modelfs manifest create SRC`: a manifest of a remote prefix or a local directory.

Every file is hashed once, streaming, in parallel (see `hashing`); a remote prefix's files keep
their ETags, and the prefix itself becomes the manifest's first source. `-o FILE` writes it
(YAML if the name ends in .yaml or .yml, else JSON), otherwise it goes to stdout; `--upload`
stores it as `manifest.json` in the prefix, where `pull`, `verify` and a mount find it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelfs import console
from modelfs.config.files import resolve
from modelfs.config.units import format_size
from modelfs.errors import UsageError
from modelfs.pull.hashing import Hashed, hash_local, hash_remote, local_files
from modelfs.pull.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestFile,
    ManifestSource,
    dump_manifest,
)
from modelfs.pull.plan import list_prefix
from modelfs.store.sourcespec import SourceSettings, s3_store


def cmd_create(args: argparse.Namespace) -> int:
    local = Path(args.src)
    if local.is_dir():
        if args.upload:
            raise UsageError("--upload needs a remote prefix as SRC, not a local directory")
        hashed = hash_local(local, local_files(local), args.transfers)
        manifest = _manifest(args.name or local.resolve().name, args.version, hashed, [])
        return _write(manifest, args.output)
    remote, spec = resolve(args.src, args.config)
    store = s3_store(remote, spec, SourceSettings(transfers=args.transfers))
    store.check_bucket()
    infos = [
        info
        for info in list_prefix(store, spec.prefix)
        if info.key[len(spec.prefix) :] != MANIFEST_NAME
    ]
    hashed = hash_remote(store, spec.prefix, infos, args.transfers)
    name = args.name or spec.prefix.rstrip("/").rpartition("/")[2] or spec.bucket
    manifest = _manifest(
        name, args.version, hashed, [ManifestSource(remote=spec.source, priority=1)]
    )
    if args.upload:
        key = spec.prefix + MANIFEST_NAME
        store.put_bytes(key, dump_manifest(manifest).encode())
        print(f"uploaded {spec.source.rstrip('/')}/{MANIFEST_NAME}", file=sys.stderr)
    if args.output or not args.upload:
        return _write(manifest, args.output)
    return console.EXIT_OK


def _manifest(
    name: str, version: str, hashed: list[Hashed], sources: list[ManifestSource]
) -> Manifest:
    files = tuple(ManifestFile(h.path, h.size, h.sha256, h.etag) for h in hashed)
    total = format_size(sum(h.size for h in hashed))
    print(f"manifest: {len(files)} files, {total} hashed", file=sys.stderr)
    return Manifest(name=name, version=version, files=files, sources=tuple(sources))


def _write(manifest: Manifest, output: str | None) -> int:
    yaml_format = bool(output and output.endswith((".yaml", ".yml")))
    text = dump_manifest(manifest, yaml_format=yaml_format)
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
    return console.EXIT_OK

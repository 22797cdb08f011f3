"""`modelfs verify TARGET [--manifest M]`: does a tree hold exactly what its manifest says?

TARGET is a local directory (a pull's DEST, or a directory of a mount, read like any other),
or a remote prefix. The manifest is `--manifest` (a file or a URL), else `manifest.json` in
TARGET. Every file is hashed (see `hashing`), and every difference is one line:

    missing PATH                      in the manifest, not in the tree
    extra PATH                        in the tree, not in the manifest
    size PATH: expected N, found M
    sha256 PATH: expected E, got G

then a summary; the exit code is 1 if there was any line, 0 if the tree is exact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelfs import console
from modelfs.config.files import resolve
from modelfs.errors import ConfigError, UsageError
from modelfs.pull.hashing import Hashed, hash_local, hash_remote, local_files
from modelfs.pull.manifest import MANIFEST_NAME, Manifest, ManifestFile
from modelfs.pull.plan import (
    auth_headers,
    fetch_manifest,
    list_prefix,
    manifest_in,
    read_manifest,
)
from modelfs.store.sourcespec import SourceSettings, is_url, s3_store


def cmd_verify(args: argparse.Namespace) -> int:
    local = Path(args.target)
    if local.is_dir():
        manifest = _manifest(args.manifest, local / MANIFEST_NAME, args.token_file)
        sizes = local_files(local)
        expected = manifest.by_path()
        hashed = hash_local(
            local, [p for p in sizes if _worth_hashing(p, sizes, expected)], args.transfers
        )
    elif ":" in args.target and not is_url(args.target):
        remote, spec = resolve(args.target, args.config)
        store = s3_store(remote, spec, SourceSettings(transfers=args.transfers))
        infos = {info.key[len(spec.prefix) :]: info for info in list_prefix(store, spec.prefix)}
        if args.manifest:
            manifest = _manifest(args.manifest, None, args.token_file)
        else:
            found = manifest_in(store, spec.prefix, infos)
            if found is None:
                raise ConfigError(f"no {MANIFEST_NAME} in {spec.source}: give --manifest")
            manifest = found
        infos.pop(MANIFEST_NAME, None)
        sizes = {path: info.size for path, info in infos.items()}
        expected = manifest.by_path()
        wanted = [info for path, info in infos.items() if _worth_hashing(path, sizes, expected)]
        hashed = hash_remote(store, spec.prefix, wanted, args.transfers)
    else:
        raise UsageError(f"{args.target}: not a directory or REMOTE:BUCKET/PREFIX")
    return _report(manifest, sizes, hashed)


def _manifest(given: str | None, default: Path | None, token_file: str | None) -> Manifest:
    if given is not None:
        if is_url(given):
            return fetch_manifest(given, auth_headers(token_file))
        return read_manifest(Path(given))
    if default is None or not default.is_file():
        raise ConfigError(f"no manifest at {default}: give --manifest")
    return read_manifest(default)


def _worth_hashing(path: str, sizes: dict[str, int], expected: dict[str, ManifestFile]) -> bool:
    """Hash only files the manifest has at that size: a wrong size says enough."""
    entry = expected.get(path)
    return entry is not None and entry.size == sizes[path]


def _report(manifest: Manifest, sizes: dict[str, int], hashed: list[Hashed]) -> int:
    problems: list[str] = []
    digests = {h.path: h.sha256 for h in hashed}
    for entry in manifest.files:
        if entry.path not in sizes:
            problems.append(f"missing {entry.path}")
        elif sizes[entry.path] != entry.size:
            problems.append(f"size {entry.path}: expected {entry.size}, found {sizes[entry.path]}")
        elif digests.get(entry.path) != entry.sha256:
            problems.append(
                f"sha256 {entry.path}: expected {entry.sha256}, got {digests.get(entry.path)}"
            )
    known = manifest.by_path()
    problems += [f"extra {path}" for path in sorted(sizes) if path not in known]
    for line in problems:
        print(line)
    checked = len(manifest.files)
    if problems:
        print(f"verify: {len(problems)} problem(s) in {checked} files", file=sys.stderr)
        return console.EXIT_FAILURE
    print(f"verify: {checked} files, all as the manifest says", file=sys.stderr)
    return console.EXIT_OK

"""`modelfs presign SPEC --expires DUR [--manifest FILE]`: signed GET links, made locally.

For one object it prints one URL. For a prefix it prints one `URL  PATH` line per file, or with
`--manifest FILE` writes a manifest whose files carry their signed links (`urls`) and the time
they expire (`expires`, ISO 8601 UTC): a keyless teammate pulls it with `modelfs pull FILE`.
Sizes come from the listing; sha256 from the prefix's own manifest when there is one (each file
is hashed, streaming, when there is none: a manifest without sha256 would verify nothing).

SigV4 links live at most 7 days; a longer `--expires` is a one-line error. Nothing secret is
printed beyond the URLs themselves (which carry a signature, by nature, and no key).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from modelfs import console
from modelfs.config.files import resolve
from modelfs.errors import UsageError
from modelfs.pull.hashing import hash_remote
from modelfs.pull.manifest import MANIFEST_NAME, Manifest, ManifestFile, dump_manifest
from modelfs.pull.plan import list_prefix, manifest_in
from modelfs.store.sourcespec import SourceSettings, s3_store

SIGV4_MAX_EXPIRES = 7 * 24 * 3600  # S3 refuses a presigned URL that claims to live longer
_HASH_THREADS = 8


def presign(args: argparse.Namespace) -> int:
    expires = int(args.expires)
    if not 1 <= expires <= SIGV4_MAX_EXPIRES:
        raise UsageError(
            f"--expires {args.expires:g}s: a signed link lives 1 s to 7 days (SigV4's limit); "
            "for longer, serve stable links with `modelfs serve`"
        )
    remote, spec = resolve(args.spec, args.config)
    store = s3_store(remote, spec, SourceSettings())
    store.check_bucket()
    infos = list_prefix(store, spec.prefix)
    if not infos and spec.prefix:  # one object
        key = spec.prefix.rstrip("/")
        store.head(key)  # NotFound: a one-line error
        print(store.presign(key, expires))
        return console.EXIT_OK
    relative = {info.key[len(spec.prefix) :]: info for info in infos}
    known = manifest_in(store, spec.prefix, relative)
    relative.pop(MANIFEST_NAME, None)
    links = {path: store.presign(info.key, expires) for path, info in relative.items()}
    if args.manifest is None:
        for path, url in sorted(links.items()):
            print(f"{url}  {path}")
        return console.EXIT_OK
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires)
    stamp = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    sha256 = {f.path: f.sha256 for f in known.files} if known else {}
    missing = [info for path, info in relative.items() if path not in sha256]
    if missing:
        print(f"presign: hashing {len(missing)} file(s) not in a manifest", file=sys.stderr)
        for hashed in hash_remote(store, spec.prefix, missing, _HASH_THREADS):
            sha256[hashed.path] = hashed.sha256
    files = tuple(
        ManifestFile(path, info.size, sha256[path], info.etag, (links[path],), {"expires": stamp})
        for path, info in sorted(relative.items())
    )
    name = known.name if known else spec.prefix.rstrip("/").rpartition("/")[2] or spec.bucket
    version = known.version if known else ""
    manifest = Manifest(name, version, files, extra={"links_expire": stamp})
    Path(args.manifest).write_text(dump_manifest(manifest), encoding="utf-8")
    print(f"presign: {len(files)} links valid until {stamp} in {args.manifest}", file=sys.stderr)
    return console.EXIT_OK

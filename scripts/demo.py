"""The demo behind scripts/demo.sh: a real local S3 bucket, mounted and used by an app.

Shows each command as it runs, like a terminal session. Everything lives under --dir
(default /tmp/modelfs-demo) and is stopped and unmounted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import SeaweedServer  # noqa: E402 - the dev S3 server lives with the tests

BUCKET = "index-tts-data"
MiB = 1 << 20


def show(*command: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    words = [str(c) for c in command]
    print(f"\n$ {shlex.join(words)}", flush=True)
    result = subprocess.run(words, text=True, capture_output=True, check=False)
    print((result.stdout + result.stderr).rstrip(), flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: command failed with {result.returncode}")
    return result


def sample_bucket(server: SeaweedServer, model_mib: int) -> None:
    """A bucket shaped like the field's: versioned cache_hub, tokenizer, voices, prompts."""
    client = server.client()
    server.create_bucket(BUCKET)
    rng = __import__("random").Random(23)
    files = {
        # 1 MiB at a time: randbytes of 256 MiB or more overflows (its bit count is a C int)
        "models/model_v23.pt": b"".join(rng.randbytes(MiB) for _ in range(model_mib)),
        "models/config.yaml": b"sample_rate: 24000\nversion: 23\n",
        "tokenizer/bpe.model": rng.randbytes(400_000),
        "tokenizer/vocab.json": json.dumps({f"tok{i}": i for i in range(2000)}).encode(),
        "tokenizer/tokenizer_config.json": b'{"lowercase": false}',
    }
    for path, data in files.items():
        client.put_object(Bucket=BUCKET, Key=f"cache_hub_v23/{path}", Body=data)
    client.put_object(Bucket=BUCKET, Key="audio_samples/voice_01.wav", Body=rng.randbytes(300_000))
    client.put_object(Bucket=BUCKET, Key="logs/", Body=b"")  # where the app writes its log
    client.put_object(Bucket=BUCKET, Key="prompts_zh.json", Body='{"greeting": "你好"}'.encode())


def write_config(
    path: Path, server: SeaweedServer, mountpoint: Path, app: Path, cache: Path
) -> None:
    standin = ROOT / "tests/support/standin_app.py"
    path.write_text(
        f"""[compshare]
type = s3
provider = SeaweedFS
access_key_id = {server.access_key}
secret_access_key = {server.secret_key}
endpoint = {server.endpoint}
region = us-east-1

[run:index-tts]
mount = compshare:{BUCKET} {mountpoint}
cache-dir = {cache}
link = cache_hub=cache_hub_v23
workdir = {app}
command = {sys.executable} {standin}
"""
    )


def timed_read(path: Path) -> float:
    """MB/s of a read of `path` past the kernel's page cache: its pages (only its: the demo
    leaves the rest of the machine's cache alone) are dropped first."""
    with path.open("rb") as file:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    started = time.monotonic()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(MiB):
            size += len(chunk)
    return size / (time.monotonic() - started) / 1e6


def share_through_service(modelfs: list[str], base: Path) -> None:
    """`modelfs serve` with a token file; a stable link with curl, and a pull through it."""
    tokens = base / "tokens"
    token = secrets.token_hex(16)
    tokens.write_text(f"{token} teammate\n")
    tokens.chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [*modelfs, "serve", f"compshare:{BUCKET}", "--prefix", "cache_hub_v23"]
    command += ["--listen", f"127.0.0.1:{port}", "--tokens", str(tokens)]
    print(f"\n$ {shlex.join(command)} &", flush=True)
    service = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
                break
            time.sleep(0.1)
        auth = f"Authorization: Bearer {token}"
        show("curl", "-sSL", "-H", auth, f"{url}/cache_hub_v23/models/config.yaml")
        env = {**os.environ, "MODELFS_TOKEN": token}
        words = [*modelfs, "pull", f"{url}/cache_hub_v23/manifest.json", str(base / "teammate")]
        print(f"\n$ MODELFS_TOKEN=... {shlex.join(words)}", flush=True)
        result = subprocess.run(words, capture_output=True, text=True, env=env, check=True)
        print((result.stdout + result.stderr).rstrip(), flush=True)
    finally:
        service.terminate()
        service.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/modelfs-demo"))
    parser.add_argument("--model-mib", type=int, default=256)
    args = parser.parse_args()
    base: Path = args.dir
    shutil.rmtree(base, ignore_errors=True)
    mountpoint, app, cache = base / "mnt", base / "app", base / "cache"
    for directory in (mountpoint, app):
        directory.mkdir(parents=True)
    config = base / "modelfs.conf"
    modelfs = [sys.executable, "-m", "modelfs", "--config", str(config)]

    with SeaweedServer(base / "seaweed") as server:
        print(f"demo: SeaweedFS S3 on {server.endpoint}; loading a sample bucket", flush=True)
        sample_bucket(server, args.model_mib)
        write_config(config, server, mountpoint, app, cache)
        show(*modelfs, "remotes")
        print("\ndemo: pin the model tree: sizes and sha256 in cache_hub_v23/manifest.json")
        manifest_file = base / "index-tts.manifest.yaml"
        show(*modelfs, "manifest", "create", f"compshare:{BUCKET}/cache_hub_v23", "--upload",
             "--name", "index-tts", "--version", "23", "-o", manifest_file)  # fmt: skip
        show(*modelfs, "mount", "--daemon", "--cache-dir", cache, f"compshare:{BUCKET}", mountpoint)
        try:
            show("ls", "-lR", mountpoint)
            model = mountpoint / "cache_hub_v23/models/model_v23.pt"
            cold, warm = timed_read(model), timed_read(model)
            print(f"\nread {model.name}: cold {cold:.0f} MB/s, warm (block cache) {warm:.0f} MB/s")
            print("\ndemo: warm the whole tree into the cache and pin it (never evicted)")
            show(*modelfs, "warm", mountpoint / "cache_hub_v23", "--pin")
            show(*modelfs, "status", mountpoint)
        finally:
            show(*modelfs, "unmount", mountpoint, check=False)

        print("\ndemo: the app, started through `modelfs run` (mounts, links cache_hub, runs)")
        show(*modelfs, "run", "index-tts")
        show("ls", "-l", app)
        log = server.client().get_object(Bucket=BUCKET, Key="logs/app.log")["Body"].read()
        print("\nthe app's log, read back from the bucket (written through the mount):")
        print(log.decode())

        print("demo: without FUSE: pull the tree onto local disk, verified, then check it")
        pulled = base / "pulled"
        show(*modelfs, "pull", f"compshare:{BUCKET}/cache_hub_v23", pulled)
        show(*modelfs, "verify", pulled)

        print("\ndemo: share without keys: a signed link, then a link service with a token")
        one = f"compshare:{BUCKET}/cache_hub_v23/models/config.yaml"
        show(*modelfs, "presign", one, "--expires", "1h")
        share_through_service(modelfs, base)
    print("\ndemo: done (SeaweedFS stopped, nothing left mounted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

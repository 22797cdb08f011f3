"""`modelfs pull`, `manifest create` and `verify`, run as the CLI against a real SeaweedFS.

Sources are remotes behind fault proxies (`FaultProxy`): the proxy's log says which ranges
reached "the network", and its faults play the failures a pull must survive: wrong bytes, an
expired link's 403 half way, a stall, a kill -9 in the middle.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelfs.pull.engine import BLOCK_SIZE
from modelfs.pull.partfiles import PULL_DIR, partial_names
from modelfs.read.concurrency import MINIMUM
from support import FaultProxy, ProxyRequest, SeaweedServer, make_config
from support.mounting import MODELFS, run_cli
from support.pullrecords import recorded_blocks

MiB = 1 << 20


@dataclass
class Origin:
    """A bucket of model files, reachable as remote "a" through `proxy` (and as "b" through
    `second`, the same bucket behind another proxy)."""

    seaweed: SeaweedServer
    bucket: str
    proxy: FaultProxy
    second: FaultProxy
    config: Path
    tmp: Path

    def put(self, key: str, data: bytes) -> None:
        self.seaweed.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def pull(self, *args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return run_cli("--config", self.config, "pull", *args, timeout=timeout)

    def gets(self, proxy: FaultProxy | None = None) -> list[tuple[str, str | None]]:
        return [(r.path, r.range) for r in (proxy or self.proxy).requests if r.method == "GET"]


@pytest.fixture
def origin(seaweed: SeaweedServer, bucket: str, tmp_path: Path) -> Iterator[Origin]:
    with FaultProxy(seaweed.endpoint) as proxy, FaultProxy(seaweed.endpoint) as second:
        config = make_config(tmp_path, proxy.endpoint, name="a")
        make_config(tmp_path, second.endpoint, name="b")
        yield Origin(seaweed, bucket, proxy, second, config, tmp_path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(path: Path, files: dict[str, bytes], sources: list[dict[str, object]]) -> Path:
    manifest = {
        "name": "test",
        "version": "1",
        "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()],
        "sources": sources,
    }
    path.write_text(json.dumps(manifest))
    return path


TREE = {
    "models/model.safetensors": os.urandom(5 * MiB + 123),
    "tokenizer/vocab.json": b'{"a": 1}',
    "tokenizer/merges.txt": os.urandom(3000),
    "empty.txt": b"",
}


def test_pull_of_a_prefix_a_manifest_and_one_object_is_byte_exact(origin: Origin) -> None:
    for key, data in TREE.items():
        origin.put(f"v1/{key}", data)
    dest = origin.tmp / "prefix"
    done = origin.pull(f"a:{origin.bucket}/v1", dest)
    assert done.returncode == 0, done.stderr
    for key, data in TREE.items():
        assert (dest / key).read_bytes() == data
    manifest = write_manifest(
        origin.tmp / "m.json", TREE, [{"remote": f"a:{origin.bucket}/v1", "priority": 1}]
    )
    by_manifest = origin.tmp / "manifest"
    done = origin.pull(manifest, by_manifest)
    assert done.returncode == 0, done.stderr
    for key, data in TREE.items():
        assert (by_manifest / key).read_bytes() == data
    one = origin.tmp / "one"
    done = origin.pull(f"a:{origin.bucket}/v1/tokenizer/merges.txt", one)
    assert done.returncode == 0, done.stderr
    assert (one / "merges.txt").read_bytes() == TREE["tokenizer/merges.txt"]
    assert sorted(p.name for p in one.iterdir()) == [PULL_DIR, "merges.txt"]


def test_a_complete_file_is_skipped_without_a_request(origin: Origin) -> None:
    for key, data in TREE.items():
        origin.put(f"v1/{key}", data)
    dest = origin.tmp / "dest"
    assert origin.pull(f"a:{origin.bucket}/v1", dest).returncode == 0
    origin.proxy.clear_requests()
    again = origin.pull(f"a:{origin.bucket}/v1", dest)
    assert again.returncode == 0, again.stderr
    assert [r for r in origin.gets() if r[1] is not None] == []  # no data GET at all
    assert "0 fetched, 4 already complete" in again.stderr


def test_a_killed_pull_resumes_without_fetching_a_recorded_block_again(origin: Origin) -> None:
    data = os.urandom(48 * MiB)
    origin.put("big/model.bin", data)
    dest = origin.tmp / "dest"
    recorded = _kill_half_way(origin, dest, blocks=12)
    assert 12 <= len(recorded) < 48
    origin.proxy.clear_requests()
    second = origin.pull(f"a:{origin.bucket}/big", dest)
    assert second.returncode == 0, second.stderr
    assert (dest / "model.bin").read_bytes() == data
    fetched_again = set()
    for _, byte_range in origin.gets():
        if byte_range is None:
            continue
        first_byte, last_byte = (int(x) for x in byte_range.removeprefix("bytes=").split("-"))
        fetched_again |= set(range(first_byte // MiB, last_byte // MiB + 1))
    assert not fetched_again & recorded, sorted(fetched_again & recorded)
    assert fetched_again | recorded == set(range(48))


def test_a_pull_resumed_after_its_object_was_replaced_starts_afresh(origin: Origin) -> None:
    """Without a manifest, nothing would catch a file made of two versions' blocks: the
    blocks a killed pull recorded are of the ETag it listed, and count for that one only."""
    old, new = os.urandom(48 * MiB), os.urandom(48 * MiB)
    origin.put("big/model.bin", old)
    dest = origin.tmp / "dest"
    assert len(_kill_half_way(origin, dest, blocks=8)) >= 8
    origin.put("big/model.bin", new)
    second = origin.pull(f"a:{origin.bucket}/big", dest)
    assert second.returncode == 0, second.stderr
    assert (dest / "model.bin").read_bytes() == new
    assert f"bytes by source: a:{origin.bucket}/big 48.0M" in second.stderr  # all of it again


def _kill_half_way(origin: Origin, dest: Path, blocks: int) -> set[int]:
    """Pull big/ into `dest` slowly, kill -9 it once `blocks` blocks are recorded, and clear
    the proxy's faults; the blocks recorded."""
    origin.proxy.delay_next(0.15, times=None)  # slow enough to kill half way
    command = [*MODELFS, "--config", str(origin.config), "pull", f"a:{origin.bucket}/big"]
    command += [str(dest), "--transfers", "2", "--part-size", "2M"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(recorded_blocks(dest)) < blocks:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    origin.proxy.clear_faults()
    return recorded_blocks(dest)


def test_wrong_bytes_from_one_source_are_caught_and_the_next_source_used(origin: Origin) -> None:
    data = os.urandom(6 * MiB)
    origin.put("v1/model.bin", data)
    manifest = write_manifest(
        origin.tmp / "m.json",
        {"model.bin": data},
        [
            {"remote": f"a:{origin.bucket}/v1", "priority": 1},
            {"remote": f"b:{origin.bucket}/v1", "priority": 2},
        ],
    )
    origin.proxy.corrupt_next(at_byte=1000, times=None)  # every GET from "a" has a wrong byte
    dest = origin.tmp / "dest"
    done = origin.pull(manifest, dest)
    assert done.returncode == 0, done.stderr
    assert (dest / "model.bin").read_bytes() == data
    assert "trying other sources" in done.stderr
    assert origin.gets(origin.second)  # the second source delivered


SMALL = {f"d{i % 3}/f{i:03d}.json": os.urandom(2000 + 37 * i) for i in range(40)}


def test_small_files_fall_back_one_by_one_and_get_the_users_mode(origin: Origin) -> None:
    for path, data in SMALL.items():
        origin.put(f"v1/{path}", data)
    manifest = write_manifest(
        origin.tmp / "m.json",
        SMALL,
        [
            {"remote": f"a:{origin.bucket}/v1", "priority": 1},
            {"remote": f"b:{origin.bucket}/v1", "priority": 2},
        ],
    )
    origin.proxy.corrupt_next(at_byte=1000, times=None)  # every small file from "a" is wrong
    dest = origin.tmp / "dest"
    done = origin.pull(manifest, dest, "--json")
    assert done.returncode == 0, done.stderr
    umask = os.umask(0o022)
    os.umask(umask)
    for path, data in SMALL.items():
        assert (dest / path).read_bytes() == data
        assert (dest / path).stat().st_mode & 0o777 == 0o666 & ~umask
    events = [json.loads(line) for line in done.stdout.splitlines()]
    done_files = {e["path"] for e in events if e["event"] == "file" and e["state"] == "done"}
    assert done_files == set(SMALL)
    assert len(origin.gets(origin.second)) == len(SMALL)
    assert not list((dest / PULL_DIR / "partial").iterdir())


def test_an_interrupted_pull_of_small_files_leaves_only_whole_files(origin: Origin) -> None:
    for path, data in SMALL.items():
        origin.put(f"v1/{path}", data)
    # Every GET of a file (ranged or not; the small-file lane may ask for the whole object)
    # takes 0.1 s, so the pull is still running when the test sends its Ctrl-C.
    origin.proxy.delay_next(0.1, times=None, match=lambda r: r.method == "GET" and "/v1/" in r.path)
    dest = origin.tmp / "dest"
    command = [*MODELFS, "--config", str(origin.config), "pull", f"a:{origin.bucket}/v1"]
    first = subprocess.Popen([*command, str(dest), "--transfers", "2"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(dest.glob("d*/*"))) < 5:
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr  # Ctrl-C: no traceback
    assert b"Traceback" not in stderr
    present = {p.relative_to(dest).as_posix() for p in dest.glob("d*/*")}
    assert 5 <= len(present) < len(SMALL)
    for path in present:
        assert (dest / path).read_bytes() == SMALL[path]  # never a partial file in place
    origin.proxy.clear_faults()
    origin.proxy.clear_requests()
    second = origin.pull(f"a:{origin.bucket}/v1", dest)
    assert second.returncode == 0, second.stderr
    for path, data in SMALL.items():
        assert (dest / path).read_bytes() == data
    fetched_again = {path.removeprefix(f"/{origin.bucket}/v1/") for path, _ in origin.gets()}
    assert not fetched_again & present  # recorded at the interrupted pull's last checkpoint


def test_a_403_half_way_falls_back_to_the_next_source(origin: Origin) -> None:
    data = os.urandom(12 * MiB)
    origin.put("v1/model.bin", data)
    manifest = write_manifest(
        origin.tmp / "m.json",
        {"model.bin": data},
        [
            {"remote": f"a:{origin.bucket}/v1", "priority": 1},
            {"remote": f"b:{origin.bucket}/v1", "priority": 2},
        ],
    )
    # The first few GETs work, then every one is refused, as when a signed link expires.
    data_gets = itertools.count()

    def after_three(request: ProxyRequest) -> bool:
        return request.range is not None and next(data_gets) >= 3

    fault = origin.proxy.fail_next(403, times=None, match=after_three)
    dest = origin.tmp / "dest"
    done = origin.pull(manifest, dest, "--transfers", "2", "--part-size", "2M")
    assert done.returncode == 0, done.stderr
    assert (dest / "model.bin").read_bytes() == data
    assert fault.remaining is None
    assert origin.gets(origin.second)
    assert "bytes by source" in done.stderr


def test_a_stalled_source_is_left_within_the_stall_limit(origin: Origin) -> None:
    data = os.urandom(4 * MiB)
    origin.put("v1/model.bin", data)
    manifest = write_manifest(
        origin.tmp / "m.json",
        {"model.bin": data},
        [
            {"remote": f"a:{origin.bucket}/v1", "priority": 1},
            {"remote": f"b:{origin.bucket}/v1", "priority": 2},
        ],
    )
    origin.proxy.stall_next(after_bytes=100_000, times=None)
    started = time.monotonic()
    done = origin.pull(manifest, origin.tmp / "dest", "--stall-timeout", "2s")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert (origin.tmp / "dest" / "model.bin").read_bytes() == data
    assert took < 20, took  # a stall costs the limit (2 s) and a restart, not the default 30 s


def test_too_little_space_fails_before_any_get(origin: Origin, tiny_disk: Path) -> None:
    origin.put("v1/model.bin", os.urandom(3 * MiB))
    done = origin.pull(f"a:{origin.bucket}/v1", tiny_disk / "dest")
    assert done.returncode == 1
    assert "not enough space" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert [r for r in origin.gets() if r[1] is not None] == []


def test_a_partial_file_that_cannot_be_written_is_one_line_naming_the_file(
    origin: Origin,
) -> None:
    origin.put("v1/model.bin", os.urandom(4 * MiB))
    dest = origin.tmp / "dest"
    part, _ = partial_names(dest / PULL_DIR / "partial", "model.bin", BLOCK_SIZE)
    part.mkdir(parents=True)  # where the partial file goes, a directory: EISDIR (even as root)
    done = origin.pull(f"a:{origin.bucket}/v1", dest)
    assert done.returncode == 1, done.stderr
    assert f"model.bin: could not be written to {dest}: Is a directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_wrong_sha256_in_the_manifest_is_exit_1_naming_the_file(origin: Origin) -> None:
    data = os.urandom(100_000)
    origin.put("v1/a.bin", data)
    manifest = write_manifest(
        origin.tmp / "m.json", {"a.bin": data}, [{"remote": f"a:{origin.bucket}/v1"}]
    )
    text = json.loads(manifest.read_text())
    text["files"][0]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(text))
    done = origin.pull(manifest, origin.tmp / "dest")
    assert done.returncode == 1
    assert f"a.bin: sha256 mismatch: expected {'0' * 64}, got {sha(data)}" in done.stderr
    assert not (origin.tmp / "dest" / "a.bin").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("files: 3\n", "files: expected a list"),
        ('{"files": [{"path": "../x", "size": 1, "sha256": "' + "a" * 64 + '"}]}', "files[0]"),
        ("files:\n  - {path: a, size: 1, sha256: abc}\n", "files[0].sha256"),
        ("{not json", "not valid JSON or YAML"),
    ],
)
def test_a_malformed_manifest_is_exit_2_naming_the_field(
    origin: Origin, text: str, message: str
) -> None:
    manifest = origin.tmp / "bad.yaml"
    manifest.write_text(text)
    done = origin.pull(manifest, origin.tmp / "dest")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_verify_finds_a_flipped_byte_a_missing_and_an_extra_file(origin: Origin) -> None:
    for key, data in TREE.items():
        origin.put(f"v1/{key}", data)
    created = run_cli(
        "--config", origin.config, "manifest", "create", f"a:{origin.bucket}/v1", "--upload"
    )
    assert created.returncode == 0, created.stderr
    dest = origin.tmp / "dest"
    assert origin.pull(f"a:{origin.bucket}/v1", dest).returncode == 0
    good = run_cli("verify", dest)
    assert good.returncode == 0, good.stdout + good.stderr
    remote = run_cli("--config", origin.config, "verify", f"a:{origin.bucket}/v1")
    assert remote.returncode == 0, remote.stdout + remote.stderr
    model = dest / "models/model.safetensors"
    flipped = bytearray(model.read_bytes())
    flipped[4242] ^= 1
    model.write_bytes(bytes(flipped))
    (dest / "tokenizer/vocab.json").unlink()
    (dest / "notes.txt").write_text("mine")
    bad = run_cli("verify", dest)
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert "missing tokenizer/vocab.json" in lines
    assert "extra notes.txt" in lines
    assert any(line.startswith("sha256 models/model.safetensors: expected") for line in lines)


def test_plain_progress_lines_when_not_a_terminal(origin: Origin) -> None:
    origin.put("v1/model.bin", os.urandom(2 * MiB))
    done = origin.pull(f"a:{origin.bucket}/v1", origin.tmp / "dest")
    assert done.returncode == 0
    assert "pull: 2.0M of 2.0M (100%)" in done.stderr


def test_json_events(origin: Origin) -> None:
    origin.put("v1/model.bin", os.urandom(2 * MiB))
    done = origin.pull(f"a:{origin.bucket}/v1", origin.tmp / "dest", "--json")
    assert done.returncode == 0
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0] == {"event": "plan", "files": 1, "bytes": 2 * MiB}
    assert {"event": "file", "path": "model.bin", "state": "done", "size": 2 * MiB} in events
    assert events[-1]["event"] == "progress"
    assert events[-1]["bytes"] == 2 * MiB


def test_the_progress_bar_on_a_terminal_ends_at_100_percent(origin: Origin) -> None:
    origin.put("v1/model.bin", os.urandom(8 * MiB))
    origin.proxy.delay_next(0.3, times=None)
    command = [*MODELFS, "--config", str(origin.config), "pull", f"a:{origin.bucket}/v1"]
    command += [str(origin.tmp / "dest"), "--transfers", "1", "--part-size", "1M"]
    output = _run_on_a_pty(command, {"COLUMNS": "120"})
    assert "100%" in output or "8.4/8.4 MB" in output
    frames = output.count("\r") + output.count("\x1b[")
    assert frames > 3  # it was redrawn while it ran


def _run_on_a_pty(command: list[str], env: dict[str, str]) -> str:
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        command, stdin=follower, stdout=follower, stderr=follower, env={**os.environ, **env}
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=120)
    os.close(leader)
    assert process.returncode == 0
    return b"".join(chunks).decode(errors="replace")


STANDIN = str(Path(__file__).parent / "support" / "standin_app.py")


def test_run_pull_starts_the_app_on_pulled_files_without_fuse(origin: Origin) -> None:
    """`run --pull` on a machine without /dev/fuse: a mount namespace whose /dev lacks it."""
    for key, data in TREE.items():
        origin.put(f"v23/{key}", data)
    created = run_cli(
        "--config", origin.config, "manifest", "create", f"a:{origin.bucket}/v23", "--upload"
    )
    assert created.returncode == 0, created.stderr
    into, workdir, old_dev = origin.tmp / "models", origin.tmp / "app", origin.tmp / "olddev"
    workdir.mkdir()
    old_dev.mkdir()
    run = [
        *MODELFS, "--config", str(origin.config), "run", "--pull", f"a:{origin.bucket}/v23",
        "--into", str(into), "--link", "cache_hub=.", "--workdir", str(workdir),
        "--", sys.executable, STANDIN, "--no-log",
    ]  # fmt: skip
    script = (
        f"set -e; mount --bind /dev {old_dev}; mount -t tmpfs -o mode=755 devtmp /dev; "
        f"for n in null zero urandom random; do touch /dev/$n; mount --bind {old_dev}/$n /dev/$n;"
        " done; test ! -e /dev/fuse; exec " + " ".join(shlex.quote(word) for word in run)
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pass 1: verified {len(TREE)} files" in done.stdout
    assert (workdir / "cache_hub").resolve() == into.resolve()


def in_flight_peak(requests: list[ProxyRequest]) -> int:
    """The most of `requests` the proxy handled at once."""
    events = []
    for request in requests:
        events += [(request.started, 1), (request.finished or float("inf"), -1)]
    peak = current = 0
    for _, step in sorted(events):
        current += step
        peak = max(peak, current)
    return peak


def test_parallel_gets_start_few_and_grow_while_each_adds_throughput(origin: Origin) -> None:
    """Every GET capped at 0.5 MB/s, as a WAN link that limits each connection: the pull starts
    with a few GETs at once and adds more while they add throughput, past 16. (Slow enough
    that a loaded machine's CPU never decides: 16 GETs carry 8 MB/s.)"""
    data = os.urandom(48 * MiB)
    origin.put("v1/model.bin", data)
    origin.proxy.throttle_next(0.5e6, times=None, match=lambda r: r.range is not None)
    dest = origin.tmp / "dest"
    done = origin.pull(f"a:{origin.bucket}/v1/model.bin", dest, "--part-size", "1M", "-v")
    assert done.returncode == 0, done.stderr
    assert (dest / "model.bin").read_bytes() == data
    decisions = [line for line in done.stderr.splitlines() if "background GETs:" in line]
    assert decisions, done.stderr
    assert decisions[0].split("background GETs: ")[1].startswith(f"{MINIMUM} -> "), decisions
    ranged = [r for r in origin.proxy.requests if r.method == "GET" and r.range is not None]
    assert in_flight_peak(ranged) > 16, decisions

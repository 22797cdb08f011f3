"""Start profiles: `modelfs run` records what the app read while it started, saves it in the
bucket (`.modelfs/profiles/NAME.json`), and the next start, on a cold cache, has those ranges
fetched ahead of the app. Real SeaweedFS, real FUSE mounts, the stand-in app of
`support/checkpoint.py`; GETs and PUTs counted by the FaultProxy. The format and the recorder
alone are tested first, without a mount.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from modelfs.config.units import format_size
from modelfs.objects import ObjectInfo
from modelfs.read.profile import Profile, ProfileError, Recorder
from support import FaultProxy, SeaweedServer
from support.checkpoint import checkpoint
from support.mounting import MODELFS, MountEnv
from test_run_e2e import cleanup_mount

MiB = 1 << 20
APP = str(Path(__file__).parent / "support" / "checkpoint.py")
MODEL = "models/model.safetensors"
FILES = [MODEL, "models/config.json", "tokenizer/tokenizer.json"]
PROFILE = ".modelfs/profiles/tts.json"
# 16 tensors of 1.25 to 3 MiB (about 34 MiB): under the 64 MiB a whole-object fetch needs.
SIZES = [MiB + MiB // 4 * (1 + i % 7) for i in range(16)]


# -- the format and the recorder ------------------------------------------------------------------


def info(key: str, size: int, etag: str = "e1") -> ObjectInfo:
    return ObjectInfo(key, size, etag, 0.0)


def test_the_recorder_keeps_first_reads_in_order_as_block_ranges() -> None:
    async def main() -> None:
        model, config = info("m/model.bin", 10 * MiB), info("m/config.json", 100)
        recorder = Recorder(MiB, limit=100 * MiB, quiet=5.0)
        recorder.note(model, 0, 4096)  # the header: block 0
        recorder.note(model, 4096, 2 * MiB + 10)  # continues: blocks 1-2 extend the range
        recorder.note(config, 0, 100)
        recorder.note(model, 0, MiB)  # read again: nothing new
        recorder.note(model, 7 * MiB, 8 * MiB)
        profile = recorder.profile("tts")
        assert [(f.key, f.etag, f.size) for f in profile.files] == [
            ("m/model.bin", "e1", 10 * MiB), ("m/config.json", "e1", 100),
        ]  # fmt: skip
        assert profile.reads == ((0, 0, 3 * MiB), (1, 0, 100), (0, 7 * MiB, MiB))
        assert Profile.parse(profile.dump()) == profile
        with trio.move_on_after(4.9):
            await recorder.wait()
            raise AssertionError("quiet too early")
        recorder.note(model, 0, 10)  # an old block: still quiet since the last new one
        with trio.fail_after(0.2):
            await recorder.wait()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_recorder_stops_at_its_limit() -> None:
    recorder = Recorder(MiB, limit=2 * MiB, quiet=5.0)
    model = info("model.bin", 10 * MiB)

    async def main() -> None:
        recorder.note(model, 0, 3 * MiB)
        recorder.note(model, 5 * MiB, 6 * MiB)  # after the limit: not recorded
        with trio.fail_after(0.1):
            await recorder.wait()  # done at once: full

    trio.run(main)
    assert recorder.profile("x").reads == ((0, 0, 3 * MiB),)


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b'{"version": 2, "name": "x", "recorded": "", "files": [], "reads": []}',
        b'{"version": 1, "name": "x", "recorded": "", "files": [], "reads": [[0, 0, 1]]}',
        b'{"version": 1, "name": "x", "recorded": "", '
        b'"files": [{"key": "k", "etag": "e", "size": 10}], "reads": [[0, 5, 6]]}',
        b'{"version": 1, "name": "x", "recorded": "", '
        b'"files": [{"key": "k", "etag": 5, "size": 10}], "reads": []}',
    ],
)
def test_a_document_of_another_shape_is_refused_whole(document: bytes) -> None:
    with pytest.raises(ProfileError, match="not a start profile"):
        Profile.parse(document)


# -- on real mounts ------------------------------------------------------------------------------


class Env(MountEnv):
    def gets(self, key: str) -> list[Any]:
        return [r for r in self.proxy.requests if r.method == "GET" and f"/{key}" in r.path]

    def puts(self, key: str) -> int:
        return self.proxy.count("PUT", path_contains=f"/{self.bucket}/{key}")

    def profile(self) -> Profile:
        body = self.seaweed.client().get_object(Bucket=self.bucket, Key=PROFILE)["Body"]
        return Profile.parse(body.read())

    def etag(self, key: str) -> str:
        answer = self.seaweed.client().head_object(Bucket=self.bucket, Key=key)
        return str(answer["ETag"]).strip('"')

    def start(
        self, cache: str, *extra: str, every: int = 1, go: Path | None = None
    ) -> subprocess.Popen[str]:
        argv = [
            *MODELFS, "--config", str(self.config), "run",
            "--mount", f"test:{self.bucket}", str(self.mountpoint),
            "--cache-dir", str(self.cache_dir / cache), "--workdir", str(self.cache_dir),
            "--profile", "tts", *extra,
            "--", sys.executable, APP, "--every", str(every),
            *(["--go", str(go)] if go else []),
            *(str(self.mountpoint / name) for name in FILES),
        ]  # fmt: skip
        self.mountpoint.mkdir(exist_ok=True)
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, cache: str, *extra: str, every: int = 1) -> tuple[dict[str, Any], str]:
        """A whole `modelfs run` of the app: (the app's JSON line, run's stderr)."""
        process = self.start(cache, *extra, every=every)
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1]), err

    def mount_log(self, cache: str) -> str:
        path = self.cache_dir / cache / "modelfs.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    make_config: Callable[..., Path],
) -> Iterator[Env]:
    made = Env.create(seaweed, proxy, bucket, tmp_path, make_config)
    made.cache_dir.mkdir(mode=0o700)
    made.put(MODEL, checkpoint(SIZES, seed=1))
    made.put("models/config.json", b'{"dim": 1024}')
    made.put("tokenizer/tokenizer.json", b'{"vocab": ["a", "b"]}')
    yield made
    cleanup_mount(made.mountpoint)  # a failed test leaves no mount behind


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def blocks_of(ranges: list[tuple[int, int]]) -> list[int]:
    """The blocks of these (offset, length) ranges, in order, each once."""
    seen: list[int] = []
    for offset, length in ranges:
        for index in range(offset // MiB, (offset + length - 1) // MiB + 1):
            if index not in seen:
                seen.append(index)
    return seen


@pytest.mark.mount
def test_a_start_is_recorded_in_order_and_saved_in_the_bucket(env: Env) -> None:
    app, err = env.run("a", every=3)  # a third of the tensors: a model loading part of a file
    assert "start profile tts: the mount fetches it ahead of the app; this start is recorded" in err
    assert f"replay: no profile {PROFILE} yet" in env.mount_log("a")
    profile = env.profile()
    assert profile.name == "tts"
    assert [(f.key, f.etag) for f in profile.files] == [(key, env.etag(key)) for key in FILES]
    assert [number for number, _, _ in profile.reads][-2:] == [1, 2]  # the small files last
    blob = checkpoint(SIZES, seed=1)
    (header,) = struct.unpack("<Q", blob[:8])
    starts = [8 + header + sum(SIZES[:i]) for i in range(len(SIZES))]
    wanted = [(starts[i], SIZES[i]) for i in range(0, len(SIZES), 3)]
    recorded = blocks_of([(offset, length) for n, offset, length in profile.reads if n == 0])
    # Every block the app asked for, in the order it asked (the kernel's readahead may add a
    # few blocks after each read); the blocks no read reached are not in it.
    assert recorded[0] == 0
    firsts = [recorded.index(index) for index in blocks_of(wanted)]
    assert firsts == sorted(firsts)
    assert len(recorded) < 0.9 * len(blocks_of([(0, len(blob))]))
    assert profile.total < 0.9 * len(blob)
    assert app["bytes"] == sum(SIZES[::3]) + 13 + 21


@pytest.mark.mount
def test_the_next_cold_start_has_its_ranges_fetched_ahead_of_the_app(env: Env) -> None:
    first, _ = env.run("a")
    recorded = env.profile()
    go = env.cache_dir / "go"
    process = env.start("b", go=go)  # another machine: a cold cache
    try:
        wait_for(lambda: "replay tts: fetched" in env.mount_log("b"), "the replay to finish")
        fetched = len(env.gets(MODEL))
        assert fetched > 0
        go.touch()
        out, err = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 0, err
    second = json.loads(out.strip().splitlines()[-1])
    assert second["sha256"] == first["sha256"]
    assert len(env.gets(MODEL)) == fetched  # every read was in the cache already
    log = env.mount_log("b")
    ranges = len(recorded.reads)
    assert f"replay tts: fetching {format_size(recorded.total)} in {ranges} range(s) ahead" in log
    assert f"the app read {format_size(recorded.total)} of 3 file(s)" in log
    assert "all in its profile (kept)" in log
    assert env.puts(PROFILE) == 1  # the first start's; the second changed nothing
    assert env.profile() == recorded


@pytest.mark.mount
def test_a_profile_of_other_versions_is_skipped_with_a_log_line(env: Env) -> None:
    env.run("a")
    env.put("tokenizer/tokenizer.json", b'{"vocab": ["a", "b", "c"]}')  # a new version
    env.run("b")
    log = env.mount_log("b")
    assert "replay tts: fetching" in log
    assert "replay tts: 1 of 3 file(s) changed since it was recorded" in log
    assert "(tokenizer/tokenizer.json): their ranges skipped" in log
    assert "; saved as " in log  # recorded again, with the new version
    assert env.profile().files[2].etag == env.etag("tokenizer/tokenizer.json")
    for key in FILES:
        env.put(key, b"{}" if key != MODEL else checkpoint(SIZES, seed=2))
    env.run("c")
    log = env.mount_log("c")
    assert "replay tts: ignored, recorded for other versions of its files" in log
    assert "replay tts: fetching" not in log


@pytest.mark.mount
def test_a_bad_profile_no_profile_and_a_read_only_mount(env: Env) -> None:
    env.put(PROFILE, b"garbage")
    env.run("a", "--read-only")
    log = env.mount_log("a")
    assert f"replay: profile {PROFILE} ignored: not a start profile" in log
    assert "not saved: the mount is read-only" in log
    assert env.puts(PROFILE) == 0
    _, err = env.run("b", "--no-profile")
    assert "start profile" not in err
    assert "replay" not in env.mount_log("b")
    assert env.puts(PROFILE) == 0
    env.run("c")  # writable: the garbage is replaced by a profile
    assert env.puts(PROFILE) == 1
    assert env.profile().files[0].key == MODEL

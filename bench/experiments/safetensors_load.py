"""safetensors `load_file` through a fresh mount: cold, then warm (page cache dropped), beside
the local copy. For A/B runs of the mmap read path.

    REPS=2 python bench/experiments/safetensors_load.py [extra modelfs mount options]

Uploads DATA_DIR/weights/model.safetensors (default DATA_DIR /var/tmp/mfsb-fulldata, made by
bench.py) to its own SeaweedFS. Run as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, SeaweedServer, mounted, write_remotes

_PROBE = REPO / "bench" / "probe.py"
KEY = "weights/model.safetensors"


def drop_page_cache() -> None:
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    time.sleep(1)


def load_mb_per_s(path: Path) -> float:
    out = subprocess.run(
        [sys.executable, str(_PROBE), "safetensors", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return path.stat().st_size / float(json.loads(out.stdout)["seconds"]) / 1e6


def main(argv: list[str]) -> int:
    local = Path(os.environ.get("DATA_DIR", "/var/tmp/mfsb-fulldata")) / KEY
    reps = int(os.environ.get("REPS", "2"))
    server = SeaweedServer().start()
    try:
        server.create_bucket("perf")
        server.client().upload_file(str(local), "perf", KEY)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            work = Path(scratch)
            remotes = write_remotes(work / "remotes.conf", server)
            for _ in range(reps):
                drop_page_cache()
                local_speed = load_mb_per_s(local)
                with mounted(remotes, work, argv[1:]) as mountpoint:
                    drop_page_cache()
                    cold = load_mb_per_s(mountpoint / KEY)
                    drop_page_cache()
                    if os.environ.get("PAUSE"):
                        input(f"warm load next; pid {os.getpid()}; press enter")
                    warm = load_mb_per_s(mountpoint / KEY)
                figures = f"local {local_speed:.0f}, cold {cold:.0f}, warm {warm:.0f}"
                print(f"MB/s: {figures}", flush=True)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""systemd units for modelfs, and `modelfs systemd install NAME` which writes them.

What it owns: the text of the two template units (the files shipped in `systemd/` are this
module's output for the default paths; a test keeps them equal) and the per-instance drop-ins.

    /etc/systemd/system/                       (--dest)
    ├── modelfs@.service                       mount template: one foreground `modelfs mount`
    ├── modelfs@tts.service.d/modelfs.conf     Environment= MODELFS_SOURCE/MOUNTPOINT/OPTIONS
    ├── modelfs-run@.service                   app template: `modelfs run %i`
    └── modelfs-run@index-tts.service.d/modelfs.conf   ordering after modelfs@tts (if named)

Invariants: no secret ever appears in a unit; units name the remote, and the keys stay in the
config file (`--config` with an absolute path). The mount unit is `Type=notify`: `modelfs
mount` sends READY=1 once the mount answers a stat. A dead mount never outlives its unit:
`fusermount3 -u -z` runs before every start (a crash leaves ENOTCONN behind) and after every
stop. `KillMode=mixed` sends SIGTERM to the main process only, so the mount drains write-back
and the app shuts down before anything else is killed.
"""

from __future__ import annotations

import configparser
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from modelfs.errors import ConfigError
from modelfs.run.plan import (
    MountTarget,
    find_section,
    mount_target_from_section,
)

DEFAULT_MODELFS = "/usr/local/bin/modelfs"
DEFAULT_CONFIG = "/etc/modelfs/modelfs.conf"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
FUSERMOUNT = "/usr/bin/fusermount3"
MOUNT_TEMPLATE = "modelfs@.service"
RUN_TEMPLATE = "modelfs-run@.service"
DROP_IN = "modelfs.conf"
# A stop drains write-back before the unit is killed: minutes for GBs of pending uploads.
STOP_TIMEOUT_SECONDS = 600
# Restart a failed mount after 5 s, but give up after 5 failures within 5 minutes (a wrong
# password would otherwise be retried forever).
RESTART_SECONDS = 5
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL_SECONDS = 300


# What both units share: how often systemd may start them, and how they stop and restart.
_START_LIMITS = f"""\
StartLimitIntervalSec={START_LIMIT_INTERVAL_SECONDS}
StartLimitBurst={START_LIMIT_BURST}
"""
_STOP_AND_RESTART = f"""\
KillMode=mixed
TimeoutStopSec={STOP_TIMEOUT_SECONDS}
Restart=on-failure
RestartSec={RESTART_SECONDS}
"""


def mount_unit(modelfs: str = DEFAULT_MODELFS, config: str = DEFAULT_CONFIG) -> str:
    return f"""\
# modelfs mount, one instance per [mount:NAME] section: modelfs@NAME.service
# Written by `modelfs systemd install NAME`, which also writes the drop-in
# modelfs@NAME.service.d/{DROP_IN} that sets MODELFS_SOURCE, MODELFS_MOUNTPOINT and
# MODELFS_OPTIONS. Credentials stay in the config file, never on this command line.
[Unit]
Description=modelfs mount %i
Wants=network-online.target
After=network-online.target
{_START_LIMITS}
[Service]
Type=notify
NotifyAccess=main
Environment=MODELFS_CONFIG={config}
Environment=MODELFS_OPTIONS=
CacheDirectory=modelfs/%i
CacheDirectoryMode=0700
UMask=0077
ExecStartPre=-{FUSERMOUNT} -u -z ${{MODELFS_MOUNTPOINT}}
ExecStart={modelfs} --config ${{MODELFS_CONFIG}} mount --cache-dir /var/cache/modelfs/%i \
$MODELFS_OPTIONS ${{MODELFS_SOURCE}} ${{MODELFS_MOUNTPOINT}}
ExecStopPost=-{FUSERMOUNT} -u -z ${{MODELFS_MOUNTPOINT}}
{_STOP_AND_RESTART}
[Install]
WantedBy=multi-user.target
"""


def run_unit(modelfs: str = DEFAULT_MODELFS, config: str = DEFAULT_CONFIG) -> str:
    return f"""\
# An app run through `modelfs run`, one instance per [run:NAME] section: modelfs-run@NAME.service
# `modelfs run` mounts (or heals) the bucket, links it into the app's directory, starts the
# app, remounts if the mount dies, and drains write-back when the app exits.
# Ordered after modelfs@NAME.service when that mount unit is used too; `modelfs systemd
# install NAME` adds the ordering after the [mount:M] section the run section names.
[Unit]
Description=modelfs run %i
Wants=network-online.target
After=network-online.target modelfs@%i.service
{_START_LIMITS}
[Service]
Type=notify
NotifyAccess=main
Environment=MODELFS_CONFIG={config}
ExecStart={modelfs} --config ${{MODELFS_CONFIG}} run %i
{_STOP_AND_RESTART}
[Install]
WantedBy=multi-user.target
"""


def _quote(value: str) -> str:
    """A value for a systemd `Environment="K=V"`: escape what systemd would interpret."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def mount_drop_in(target: MountTarget) -> str:
    for word in target.options:
        if any(char.isspace() for char in word):
            raise ConfigError(f"mount option {word!r} contains whitespace; systemd cannot pass it")
    settings = {
        "MODELFS_SOURCE": target.spec,
        "MODELFS_MOUNTPOINT": target.mountpoint,
        "MODELFS_OPTIONS": " ".join(target.options),
    }
    lines = [f'Environment="{key}={_quote(value)}"' for key, value in settings.items()]
    return "[Service]\n" + "\n".join(lines) + "\n"


def run_drop_in(mount_name: str) -> str:
    unit = f"modelfs@{mount_name}.service"
    return f"[Unit]\nWants={unit}\nAfter={unit}\n"


@dataclass(frozen=True, slots=True)
class UnitFile:
    path: Path
    text: str


@dataclass(frozen=True, slots=True)
class Installation:
    files: tuple[UnitFile, ...]
    enable: str  # the unit to `systemctl enable --now`


def modelfs_command() -> str:
    """The absolute path of the `modelfs` script installed next to this Python."""
    beside = Path(sys.executable).parent / "modelfs"
    if beside.exists():
        return str(beside)
    found = shutil.which("modelfs")
    if found:
        return os.path.abspath(found)
    raise ConfigError("cannot find the modelfs command; install modelfs with pip first")


def plan_installation(
    config: configparser.ConfigParser, name: str, dest: Path, modelfs: str, config_path: str
) -> Installation:
    """The files for `[mount:NAME]` or `[run:NAME]` (a run section brings its mount section)."""
    files: list[UnitFile] = []
    has_mount = config.has_section(f"mount:{name}")
    has_run = config.has_section(f"run:{name}")
    if not has_mount and not has_run:
        raise ConfigError(f"no [mount:{name}] or [run:{name}] section in {config_path}")
    mount_name = name if has_mount else None
    if has_run:
        words = find_section(config, "run", name).get("mount", "").split()
        if len(words) == 1:
            mount_name = words[0]
    if mount_name is not None:
        target = mount_target_from_section(config, mount_name)
        files.append(UnitFile(dest / MOUNT_TEMPLATE, mount_unit(modelfs, config_path)))
        drop_in = dest / f"modelfs@{mount_name}.service.d" / DROP_IN
        files.append(UnitFile(drop_in, mount_drop_in(target)))
    if not has_run:
        return Installation(tuple(files), f"modelfs@{name}.service")
    files.append(UnitFile(dest / RUN_TEMPLATE, run_unit(modelfs, config_path)))
    if mount_name is not None:
        drop_in = dest / f"modelfs-run@{name}.service.d" / DROP_IN
        files.append(UnitFile(drop_in, run_drop_in(mount_name)))
    return Installation(tuple(files), f"modelfs-run@{name}.service")


def write_files(files: tuple[UnitFile, ...]) -> None:
    for unit in files:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = unit.path.with_name(f".{unit.path.name}.tmp")
        temporary.write_text(unit.text)
        temporary.replace(unit.path)

"""systemd units for modelfs, and `modelfs systemd install NAME` which writes them.

What it owns: the text of the three template units (the files shipped in `systemd/` are this
module's output for the default paths; a test keeps them equal) and the per-instance drop-ins.

    /etc/systemd/system/                       (--dest)
    ├── modelfs@.service                       mount template: one foreground `modelfs mount`
    ├── modelfs@tts.service.d/modelfs.conf     Environment= MODELFS_SOURCE/MOUNTPOINT/OPTIONS
    ├── modelfs-run@.service                   app template: `modelfs run %i`
    ├── modelfs-run@index-tts.service.d/modelfs.conf   with modelfs@tts (if named): the
    │                                          run's --external-mount and its sandbox
    └── modelfs-serve@.service                 link service: `modelfs serve --section %i`

Invariants: no secret ever appears in a unit; units name the remote, and the keys stay in the
config file (`--config` with an absolute path). The mount unit is `Type=notify`: `modelfs
mount` sends READY=1 once the mount answers a stat. A dead mount never outlives its unit:
`fusermount3 -u -z` runs before every start (a crash leaves ENOTCONN behind) and after every
stop. `KillMode=mixed` sends SIGTERM to the main process only, so the mount drains write-back
and the app shuts down before anything else is killed.

One owner per mount: when a run section names a `[mount:M]` section, the mount unit
modelfs@M owns the mount (mounts, restarts, unmounts it with its cache dir
/var/cache/modelfs/M); the run unit wants it, starts after it, is stopped and restarted with
it (PartOf=), and runs `modelfs run --external-mount`, which uses the mount and never mounts,
heals or unmounts it. So the two never race over the mountpoint, and a restarted mount always
uses the unit's cache dir (and its pending uploads). Not Requires=: a mount unit whose first
start fails (the store down at boot) would fail the run unit's start job for good, and
Restart= does not apply to a dependency failure; instead a run started without its mount
exits 1 and is restarted until the mount is there. A run section with an inline `mount =
SPEC MOUNTPOINT` has no mount unit: its run unit mounts and heals by itself.

Restarts: a boot-time outage of the store must not leave the units failed for good (a start
limit of 5 in 5 minutes did after ~40 s), so there is no start limit (StartLimitIntervalSec=0)
and a failed unit is started again every RESTART_SECONDS, as long as it takes. A growing delay
(RestartSteps=, RestartMaxDelaySec=) needs systemd 254; Debian 12 and Ubuntu 22.04 ship 252
and 249, whose `systemd-analyze verify` rejects those keys, so the delay is constant. Exit
status 2 is bad input (console: a config, a mountpoint, an option): retrying cannot fix it,
so RestartPreventExitStatus=2. (An app run by `modelfs-run@` that exits 2 is not restarted
either: it said the same.)

Sandboxing, what each unit can live with (checked with `systemd-analyze verify`):
- the mount unit: NoNewPrivileges, RestrictSUIDSGID, LockPersonality, RestrictRealtime,
  UMask=0077 and CacheDirectoryMode=0700, but no ProtectSystem, ProtectHome, PrivateTmp or
  ReadWritePaths: each of them runs the unit in its own mount namespace whose mounts do not
  propagate to the host (systemd.exec(5), MountFlags=: "slave is applied first"), so the FUSE
  mount would be invisible to everyone else;
- the run unit: the same flags (`modelfs run` is root, the app may drop to `user = NAME`);
  and, when a mount unit owns the mount (which then exists on the host before the run unit
  starts, and reaches its namespace through propagation from the host), ProtectSystem=full
  (/usr, /boot, /etc read-only; the app keeps /var, /srv, /opt and its workdir), PrivateTmp,
  and ProtectHome=yes when no path the run needs (workdir, mountpoint, config, the modelfs
  command, the app user's home) is under /home, /root or /run/user.
  The app's umask is left alone: its files are its own business.
- the serve unit (no FUSE, no mount namespace to share): ProtectSystem=strict, ProtectHome=
  read-only, PrivateTmp, PrivateDevices, no capabilities but binding a low port, and one
  writable directory, LogsDirectory= /var/log/modelfs (0700) for its access log. Its settings
  are the `[serve:NAME]` section, so tokens and keys stay in files, never in the unit.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from modelfs.config.files import find_section
from modelfs.errors import ConfigError
from modelfs.run.plan import MountTarget, mount_target_from_section

DEFAULT_MODELFS = "/usr/local/bin/modelfs"
DEFAULT_CONFIG = "/etc/modelfs/modelfs.conf"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
FUSERMOUNT = "/usr/bin/fusermount3"
MOUNT_TEMPLATE = "modelfs@.service"
RUN_TEMPLATE = "modelfs-run@.service"
SERVE_TEMPLATE = "modelfs-serve@.service"
DROP_IN = "modelfs.conf"
# A stop drains write-back before the unit is killed: minutes for GBs of pending uploads.
STOP_TIMEOUT_SECONDS = 600
# Restart a failed unit after this long, for as long as it fails (see the docstring).
RESTART_SECONDS = 10
EXIT_BAD_INPUT = 2  # console.EXIT_BAD_INPUT: never restarted
HOME_ROOTS = ("/home", "/root", "/run/user")  # what ProtectHome= hides


# What both units share: how often systemd may start them, and how they stop and restart.
_START_LIMITS = """\
StartLimitIntervalSec=0
"""
_STOP_AND_RESTART = f"""\
KillMode=mixed
TimeoutStopSec={STOP_TIMEOUT_SECONDS}
Restart=on-failure
RestartSec={RESTART_SECONDS}
RestartPreventExitStatus={EXIT_BAD_INPUT}
"""
_HARDENING = """\
NoNewPrivileges=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
"""


def mount_unit(modelfs: str = DEFAULT_MODELFS, config: str = DEFAULT_CONFIG) -> str:
    return f"""\
# modelfs mount, one instance per [mount:NAME] section: modelfs@NAME.service
# Written by `modelfs systemd install NAME`, which also writes the drop-in
# modelfs@NAME.service.d/{DROP_IN} that sets MODELFS_SOURCE, MODELFS_MOUNTPOINT and
# MODELFS_OPTIONS. Credentials stay in the config file, never on this command line.
# No ProtectSystem/ProtectHome/PrivateTmp: a private mount namespace would hide the mount.
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
{_HARDENING}ExecStartPre=-{FUSERMOUNT} -u -z ${{MODELFS_MOUNTPOINT}}
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
# When the run section names a [mount:M] section, `modelfs systemd install NAME` adds a
# drop-in: this unit then goes with modelfs@M.service, which owns the mount, and runs
# `modelfs run --external-mount` (MODELFS_RUN_OPTIONS) in a sandbox.
[Unit]
Description=modelfs run %i
Wants=network-online.target
After=network-online.target modelfs@%i.service
{_START_LIMITS}
[Service]
Type=notify
NotifyAccess=main
Environment=MODELFS_CONFIG={config}
Environment=MODELFS_RUN_OPTIONS=
{_HARDENING}ExecStart={modelfs} --config ${{MODELFS_CONFIG}} run $MODELFS_RUN_OPTIONS %i
{_STOP_AND_RESTART}
[Install]
WantedBy=multi-user.target
"""


def serve_unit(modelfs: str = DEFAULT_MODELFS, config: str = DEFAULT_CONFIG) -> str:
    return f"""\
# The link service of one [serve:NAME] section: modelfs-serve@NAME.service
# `modelfs serve --section NAME` answers stable links with redirects to freshly signed ones.
# Keys stay in the config file and tokens in their file; an access log belongs under
# /var/log/modelfs/ (access-log = /var/log/modelfs/NAME.log), the one path it may write.
[Unit]
Description=modelfs link service %i
Wants=network-online.target
After=network-online.target
{_START_LIMITS}
[Service]
Type=notify
NotifyAccess=main
Environment=MODELFS_CONFIG={config}
ExecStart={modelfs} --config ${{MODELFS_CONFIG}} serve --section %i
LogsDirectory=modelfs
LogsDirectoryMode=0700
UMask=0077
{_HARDENING}ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
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


def run_drop_in(mount_name: str, *, protect_home: bool) -> str:
    """The run unit of a section whose mount has its own unit: that unit owns the mount."""
    unit = f"modelfs@{mount_name}.service"
    home = "ProtectHome=yes\n" if protect_home else ""
    return (
        f"[Unit]\nWants={unit}\nAfter={unit}\nPartOf={unit}\n\n"
        "[Service]\nEnvironment=MODELFS_RUN_OPTIONS=--external-mount\n"
        f"ProtectSystem=full\nPrivateTmp=yes\n{home}"
    )


def home_is_free(paths: list[str]) -> bool:
    """Whether ProtectHome= can hide /home, /root and /run/user from a run that needs `paths`."""
    return not any(
        os.path.abspath(path) == root or os.path.abspath(path).startswith(root + "/")
        for path in paths
        for root in HOME_ROOTS
    )


def _run_paths(items: dict[str, str], target: MountTarget, modelfs: str, config: str) -> list[str]:
    """Every path a run unit needs to reach: workdir, mountpoint, config, modelfs, a home."""
    user = items.get("user", "").strip()
    try:
        home = pwd.getpwnam(user).pw_dir if user else "/root"
    except KeyError:
        raise ConfigError(f"user {user!r} does not exist") from None
    workdir = items.get("workdir", "/").strip()
    return [workdir, target.mountpoint, config, modelfs, os.path.realpath(modelfs), home]


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
    """The files for `[mount:NAME]`, `[run:NAME]` (a run section brings its mount section) or
    `[serve:NAME]`."""
    files: list[UnitFile] = []
    has_mount = config.has_section(f"mount:{name}")
    has_run = config.has_section(f"run:{name}")
    serve_name = name.removeprefix("serve:")
    if name != serve_name or not (has_mount or has_run):  # `serve:NAME` says which one
        if not config.has_section(f"serve:{serve_name}"):
            raise ConfigError(
                f"no [mount:{name}], [run:{name}] or [serve:{serve_name}] section in {config_path}"
            )
        serve = UnitFile(dest / SERVE_TEMPLATE, serve_unit(modelfs, config_path))
        return Installation((serve,), f"modelfs-serve@{serve_name}.service")
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
        target = mount_target_from_section(config, mount_name)
        paths = _run_paths(find_section(config, "run", name), target, modelfs, config_path)
        drop_in = dest / f"modelfs-run@{name}.service.d" / DROP_IN
        files.append(UnitFile(drop_in, run_drop_in(mount_name, protect_home=home_is_free(paths))))
    return Installation(tuple(files), f"modelfs-run@{name}.service")


def write_files(files: tuple[UnitFile, ...]) -> None:
    for unit in files:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = unit.path.with_name(f".{unit.path.name}.tmp")
        temporary.write_text(unit.text)
        temporary.replace(unit.path)

"""`mount.modelfs`: the helper mount(8) runs for `mount -t modelfs` and fstab lines.

What it owns: translating mount(8)'s calling convention into `modelfs mount --daemon`.

mount(8) runs `/sbin/mount.TYPE SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`; for type
`fuse.modelfs` it looks for `/sbin/mount.fuse.modelfs`, so both names link to this script:

    # /etc/fstab (one line)
    compshare:index-tts-data  /mnt/tts  fuse.modelfs
        _netdev,allow_other,config=/etc/modelfs/modelfs.conf  0 0

`-o` options are `modelfs mount` options with '_' for '-' (`cache_dir=/x`, `read_only` or
`ro`, `allow_other`, `nonempty`, `no_warm_up`, `no_prefetch_small`), plus `config=FILE`.
Options that mean something to mount(8) or systemd only (`_netdev`, `nofail`, `noauto`,
`x-systemd.*`, ...) are dropped. An unknown option is an error (a typo must not be silently
ignored), unless `-s` (sloppy) was given.
`-f` (fake) and `-v` print the command instead of / before running it. The helper returns only
once the mount answers, as `--daemon` does, so `mount` and systemd see a ready mount.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from modelfs.config import options as mount_options
from modelfs.config.options import Kind
from modelfs.errors import ConfigError

# Meaningful to mount(8), the kernel's generic mount flags, or systemd's fstab generator only.
_IGNORED = frozenset(
    {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev"}
    | {"nofail", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "atime"}
    | {"noatime", "relatime", "nodiratime", "lazytime"}
)
_IGNORED_PREFIXES = ("x-", "comment=")
_ALIASES = {"ro": "read-only", "nonempty": "allow-non-empty"}


@dataclass(frozen=True, slots=True)
class HelperCall:
    spec: str
    mountpoint: str
    options: tuple[str, ...]
    fake: bool = False
    verbose: bool = False
    sloppy: bool = False


def parse_argv(argv: Sequence[str]) -> HelperCall:
    """mount(8)'s argument vector (without argv[0]) as a HelperCall."""
    positional: list[str] = []
    options: list[str] = []
    flags: set[str] = set()
    words = iter(argv)
    for word in words:
        if word in ("-o", "-t", "-N"):
            value = next(words, None)
            if value is None:
                raise ConfigError(f"{word} needs a value")
            if word == "-o":
                options += [opt for opt in value.split(",") if opt]
        elif word.startswith("-o") and len(word) > 2:
            options += [opt for opt in word[2:].split(",") if opt]
        elif word.startswith("-") and len(word) > 1:
            flags.update(word[1:])
        else:
            positional.append(word)
    if len(positional) != 2:
        raise ConfigError("usage: mount.modelfs REMOTE:BUCKET[/PREFIX] MOUNTPOINT [-o OPTIONS]")
    return HelperCall(
        positional[0], positional[1], tuple(options), "f" in flags, "v" in flags, "s" in flags
    )


def modelfs_argv(call: HelperCall) -> list[str]:
    """The `modelfs [--config C] mount --daemon ...` arguments for a helper call."""
    global_words: list[str] = []
    mount_words: list[str] = []
    for option in call.options:
        name, has_value, value = option.partition("=")
        key = _ALIASES.get(name, name.replace("_", "-"))
        if option in _IGNORED or option.startswith(_IGNORED_PREFIXES):
            continue
        if key == "config" and has_value:
            global_words += ["--config", value]
        elif _kind(key) is Kind.VALUE and has_value:
            mount_words += [f"--{key}", mount_options.checked_value(f"-o {name}", key, value)]
        elif _is_flag(key) and not has_value:
            mount_words.append(f"--{key}")
        elif not call.sloppy:
            raise ConfigError(f"unknown mount option {option!r} (use -s to ignore unknown ones)")
    spec, mountpoint = call.spec, os.path.abspath(call.mountpoint)
    return [*global_words, "mount", "--daemon", *mount_words, spec, mountpoint]


def _kind(key: str) -> Kind | None:
    option = mount_options.find(key)
    return None if option is None else option.kind


def _is_flag(key: str) -> bool:
    """`read-only`, `warm-up`, `no-warm-up`: an option given by its name alone."""
    return _kind(key) in (Kind.FLAG, Kind.SWITCH) or _kind(key.removeprefix("no-")) is Kind.SWITCH


def main(argv: Sequence[str] | None = None) -> int:
    try:
        call = parse_argv(sys.argv[1:] if argv is None else argv)
        command = [sys.executable, "-m", "modelfs", *modelfs_argv(call)]
    except ConfigError as exc:
        print(f"mount.modelfs: error: {exc}", file=sys.stderr)
        return 2
    if call.verbose or call.fake:
        print(shlex.join(command))
    if call.fake:
        return 0
    os.execv(command[0], command)

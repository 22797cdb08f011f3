"""The sources of a mount, in order: the places its files can be read from.

A mount of `REMOTE:BUCKET[/PREFIX]` lists and writes through that remote, the primary. Its
reads may come from other places that hold the same tree (a site cache on the same network),
tried first, with the primary after them. The list is written in one of two ways:

- `sources = SPEC, SPEC, ...` in the primary remote's own section of the config file, for
  every mount of that remote. The list names the primary too (its remote and bucket, with a
  prefix the mounted prefix starts with), which says what tree the list is about: a mount
  below it extends every entry by the rest of its prefix. With `sources = site:models,
  origin:models` in `[origin]`, a mount of `origin:models/llama` reads `site:models/llama`
  first, then `origin:models/llama`. A mount the list is not about (another bucket) reads its
  primary alone.
- `--source SPEC` (repeatable) on `modelfs mount`, which replaces the section's list. When
  one of them is the primary's, they work as above; otherwise each names the mounted tree
  itself (as `pull --source` does) and the primary comes after them.

The result holds the primary exactly once (as `primary`, the spec given), and no spec twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelfs.config.remote import RemoteSpec, parse_spec
from modelfs.errors import ConfigError


def mount_sources(
    primary: RemoteSpec, given: Sequence[str], configured: Sequence[str]
) -> list[RemoteSpec]:
    """The specs a mount of `primary` reads from, first to last (see the module docstring);
    `given`: the `--source` texts, `configured`: the primary remote's `sources`."""
    texts, where = (given, "--source") if given else (configured, f"[{primary.remote}] sources")
    specs = [_parsed(text, where) for text in texts]
    own = _own_entry(primary, specs)
    if own is None:
        if not given:
            return [primary]  # a list about another tree of this remote
        specs.append(primary)
        own = primary
    rest = primary.prefix[len(own.prefix) :]
    ordered: list[RemoteSpec] = []
    for spec in specs:
        extended = (
            primary if spec is own else RemoteSpec(spec.remote, spec.bucket, spec.prefix + rest)
        )
        if extended not in ordered:
            ordered.append(extended)
    return ordered


def _own_entry(primary: RemoteSpec, specs: Sequence[RemoteSpec]) -> RemoteSpec | None:
    """The entry that names the primary: its remote and bucket, the longest prefix of its
    prefix (None: none does)."""
    candidates = [
        spec
        for spec in specs
        if (spec.remote, spec.bucket) == (primary.remote, primary.bucket)
        and primary.prefix.startswith(spec.prefix)
    ]
    return max(candidates, key=lambda spec: len(spec.prefix), default=None)


def _parsed(text: str, where: str) -> RemoteSpec:
    try:
        return parse_spec(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc

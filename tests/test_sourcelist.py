"""Which sources a mount reads from, in order (`config.sourcelist`), from `--source` or the
primary remote's `sources` key."""

from __future__ import annotations

import pytest

from modelfs.config.remote import parse_spec
from modelfs.config.sourcelist import mount_sources
from modelfs.errors import ConfigError


def texts(primary: str, given: list[str], configured: list[str]) -> list[str]:
    return [str(spec) for spec in mount_sources(parse_spec(primary), given, configured)]


def test_a_configured_list_is_extended_to_the_mounted_prefix() -> None:
    configured = ["site:models", "origin:models"]
    assert texts("origin:models/llama", [], configured) == [
        "site:models/llama/",
        "origin:models/llama/",
    ]
    assert texts("origin:models", [], configured) == ["site:models", "origin:models"]


def test_the_primary_keeps_its_place_and_comes_once() -> None:
    configured = ["origin:models", "site:models", "backup:bkp/mirror", "site:models"]
    assert texts("origin:models/a/b", [], configured) == [
        "origin:models/a/b/",
        "site:models/a/b/",
        "backup:bkp/mirror/a/b/",
    ]


def test_a_configured_list_about_another_bucket_is_not_used() -> None:
    assert texts("origin:other/x", [], ["site:models", "origin:models"]) == ["origin:other/x/"]
    assert texts("origin:models/x", [], ["site:models", "origin:models/y"]) == ["origin:models/x/"]


def test_source_options_name_the_mounted_tree_and_the_primary_comes_last() -> None:
    assert texts("origin:models/llama", ["site:cache/llama"], ["site:models", "origin:models"]) == [
        "site:cache/llama/",
        "origin:models/llama/",
    ]
    assert texts("origin:models/llama", ["site:models", "origin:models"], []) == [
        "site:models/llama/",
        "origin:models/llama/",
    ]


def test_a_bad_entry_names_where_it_was_written() -> None:
    with pytest.raises(ConfigError, match=r"\[origin\] sources: invalid remote spec 'site'"):
        mount_sources(parse_spec("origin:models"), [], ["site"])
    with pytest.raises(ConfigError, match="--source: invalid bucket name"):
        mount_sources(parse_spec("origin:models"), ["site:Bad_Bucket"], [])

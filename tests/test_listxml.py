"""listxml: a ListObjectsV2 answer read into a ListPage, and what it refuses (then botocore
lists instead). The equality with botocore's reading on a real server is in
test_store_contract.py; these are the refusals and the decoding rules."""

from __future__ import annotations

from modelfs.objects import ListPage, ObjectInfo
from modelfs.store.listxml import parse_list_page

NS = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def answer(body: str, *, prefix: str = "d%2F", namespace: str = NS, extra: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult{namespace}>'
        f"<Name>b</Name><Prefix>{prefix}</Prefix><EncodingType>url</EncodingType>"
        f"{extra}{body}</ListBucketResult>"
    ).encode()


CONTENTS = (
    "<Contents><Key>d%2Fa+b%26c.txt</Key><LastModified>2026-11-22T04:40:00.500Z</LastModified>"
    "<ETag>&quot;0123abcd&quot;</ETag><Size>42</Size><StorageClass>STANDARD</StorageClass>"
    "</Contents>"
)


def test_objects_prefixes_and_token_are_read_and_url_decoded() -> None:
    body = CONTENTS + "<CommonPrefixes><Prefix>d%2Fsub+dir%2F</Prefix></CommonPrefixes>"
    extra = "<IsTruncated>true</IsTruncated><NextContinuationToken>t+1/=</NextContinuationToken>"
    page = parse_list_page(answer(body, extra=extra), "d/")
    assert page == ListPage(
        objects=(ObjectInfo("d/a b&c.txt", 42, "0123abcd", 1795322400.5),),
        prefixes=("d/sub dir/",),
        next_token="t+1/=",  # tokens are opaque: never decoded
    )


def test_an_answer_without_namespace_or_encoding_is_read_as_is() -> None:
    xml = answer(CONTENTS.replace("%2F", "/"), prefix="d/", namespace="")
    xml = xml.replace(b"<EncodingType>url</EncodingType>", b"")
    page = parse_list_page(xml, "d/")
    assert page is not None
    assert page.objects[0].key == "d/a+b%26c.txt"
    assert page.next_token is None


def test_an_answer_for_another_prefix_is_refused() -> None:
    assert parse_list_page(answer(CONTENTS, prefix="e%2F"), "d/") is None


def test_an_error_document_or_garbage_is_refused() -> None:
    error = b"<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>"
    assert parse_list_page(error, "d/") is None
    assert parse_list_page(b"<ListBucketResult", "d/") is None
    assert parse_list_page(b"", "d/") is None


def test_a_truncated_page_without_a_token_is_refused() -> None:
    assert parse_list_page(answer(CONTENTS, extra="<IsTruncated>true</IsTruncated>"), "d/") is None


def test_missing_or_unparsable_fields_are_refused() -> None:
    for broken in (
        CONTENTS.replace("<Size>42</Size>", ""),
        CONTENTS.replace("<Size>42</Size>", "<Size>many</Size>"),
        CONTENTS.replace("<Key>d%2Fa+b%26c.txt</Key>", ""),
        CONTENTS.replace("<ETag>&quot;0123abcd&quot;</ETag>", ""),
        CONTENTS.replace("2026-11-22T04:40:00.500Z", "yesterday"),
        CONTENTS.replace("2026-11-22T04:40:00.500Z", "2026-11-22T04:40:00"),  # no time zone
    ):
        assert parse_list_page(answer(broken), "d/") is None, broken

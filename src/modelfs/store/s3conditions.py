"""S3 conditional writes: a write lands only if the key holds what the writer expects.

A write given an `Expect` carries `If-Match: "<etag>"` (replace exactly that version) or
`If-None-Match: *` (create, never replace), checked by the store in the same request, so a
write-back upload never replaces a version it did not start from. A condition that does not
hold raises `StaleObject` (see `s3errors.write_condition_failed` for the answers that mean
so).

Stores that do not implement conditional writes answer 501 NotImplemented: the write is sent
again without conditions, a warning is logged once, and no conditions are sent from then on
(`enabled` only ever goes from True to False; a racing thread that still sent conditions just
meets the same 501 and falls back the same way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from modelfs.errors import StaleObject
from modelfs.store import etag
from modelfs.store.protocol import Expect
from modelfs.store.s3errors import (
    S3Errors,
    code_and_status,
    one_line,
    write_condition_failed,
    write_conditions_refused,
)

log = logging.getLogger("modelfs.store.s3")  # S3Store's records keep the name they had

# conditions (boto3 keyword arguments, maybe none) -> the store's answer
Send = Callable[[dict[str, Any]], Any]


class ConditionalWrites:
    """Sends the writes of one store with the conditions their `Expect` asks for."""

    def __init__(self, translator: S3Errors) -> None:
        self._translator = translator
        self.enabled = True  # until the store refuses a conditional write

    def send(self, operation: str, key: str, expect: Expect | None, send: Send) -> Any:
        """`send(conditions)`, the conditions saying what `key` must hold (`expect`)."""
        conditions = self._conditions(expect)
        with self._translator.errors(operation, key):
            try:
                return send(conditions)
            except ClientError as exc:
                if not conditions:
                    raise
                if write_condition_failed(exc, if_match="IfMatch" in conditions):
                    code, _ = code_and_status(exc)
                    where = self._translator.where(key)
                    raise StaleObject(
                        f"{where} is no longer the version this write expected "
                        f"({operation} answered {code})"
                    ) from exc
                if not write_conditions_refused(exc):
                    raise
                self._refuse(exc)
        with self._translator.errors(operation, key):
            return send({})

    def _conditions(self, expect: Expect | None) -> dict[str, Any]:
        if expect is None or not self.enabled:
            return {}
        if expect.etag is None:
            return {"IfNoneMatch": "*"}
        return {"IfMatch": etag.quote(expect.etag)}

    def _refuse(self, exc: ClientError) -> None:
        if self.enabled:
            self.enabled = False
            log.warning(
                "remote %r refuses conditional writes (%s): uploads check the bucket first, "
                "but a change made between that check and the upload is overwritten",
                self._translator.remote,
                one_line(str(exc)),
            )

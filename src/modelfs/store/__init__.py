"""The object store layer: the `ObjectStore` protocol and its S3 implementation.

`protocol` (the contract), `etag` (ETag rules), `s3` (`S3Store`) with its parts `s3client`,
`s3errors`, `s3conditions` and `s3range`, and the lean lane `lean` with `http`, `sigv4` and
`listxml`. Nothing is imported here: callers import the module they need.
"""

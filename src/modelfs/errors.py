"""Domain errors and the one errno table.

Every error that crosses a module boundary is a `ModelfsError` subclass carrying its errno.
The FUSE adapter maps any exception with `errno_for`; the CLI prints `str(exc)` on one line
and exits with the code `console.exit_code` gives it.
S3 error codes are translated to these classes in `store.s3errors` (one dict, `__cause__` kept).
"""

from __future__ import annotations

import errno as _errno


class ModelfsError(Exception):
    """Base class: a failure with a user-facing one-line message and an errno."""

    errno: int = _errno.EIO
    bad_input: bool = False  # the user must change something: exit code 2, not 1 (see console)
    # The same request cannot succeed until something outside changes (a policy, the key, the
    # bucket): an upload that failed so is not retried on its own (see write.queue).
    permanent: bool = False


class ConfigError(ModelfsError):
    """Bad remote spec, unknown remote, unreadable or invalid config file."""

    errno = _errno.EINVAL
    bad_input = True


class UsageError(ModelfsError):
    """A command line that cannot work as given."""

    errno = _errno.EINVAL
    bad_input = True


class NotFound(ModelfsError):
    errno = _errno.ENOENT


class AccessDenied(ModelfsError):
    errno = _errno.EACCES
    permanent = True


class ClockSkew(AccessDenied):
    """The store refused a request as signed too far from its own time (RequestTimeTooSkewed):
    not permanent, since the clock gets set right (NTP) and then the same request works."""

    permanent = False


class StaleObject(ModelfsError):
    """The object changed in the bucket while a handle still refers to its old version."""

    errno = _errno.ESTALE


class StoreUnavailable(ModelfsError):
    """Endpoint unreachable, timed out, or answering 5xx after retries."""

    errno = _errno.EIO


class StoreOffline(StoreUnavailable):
    """The store is known to be unreachable: refused at once, without sending a request."""


class Corrupt(ModelfsError):
    """Bytes that do not match what they must be (a manifest's sha256): never served."""

    errno = _errno.EIO


class BucketNotFound(ModelfsError):
    errno = _errno.ENOENT
    permanent = True


class ReadOnly(ModelfsError):
    errno = _errno.EROFS


class NoSpace(ModelfsError):
    errno = _errno.ENOSPC


class NotEmpty(ModelfsError):
    errno = _errno.ENOTEMPTY


class IsADirectory(ModelfsError):
    errno = _errno.EISDIR


class NotADirectory(ModelfsError):
    errno = _errno.ENOTDIR


class AlreadyExists(ModelfsError):
    errno = _errno.EEXIST
    bad_input = True  # at the command line: something is in the way (e.g. a link's place)


class InvalidArgument(ModelfsError):
    errno = _errno.EINVAL
    permanent = True


class NameTooLong(ModelfsError):
    """A key longer than S3 allows (1024 bytes of UTF-8)."""

    errno = _errno.ENAMETOOLONG
    permanent = True


class UploadFailed(ModelfsError):
    """Written files that could not reach the bucket (they stay staged and journaled)."""

    errno = _errno.EIO


class NotSupported(ModelfsError):
    errno = _errno.ENOTSUP


class CrossDevice(ModelfsError):
    errno = _errno.EXDEV


class UnsafePath(ModelfsError):
    """A directory or file other users could change (the control dir, the cache dir)."""

    errno = _errno.EACCES
    bad_input = True


class MountError(ModelfsError):
    """The mountpoint or FUSE itself is not usable."""

    errno = _errno.EINVAL
    bad_input = True


def errno_for(exc: BaseException) -> int:
    """The errno a FUSE reply should carry for `exc` (EIO for anything unexpected)."""
    if isinstance(exc, ModelfsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO

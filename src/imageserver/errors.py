"""The one error tree of the project; every failure a user or an operator can cause is one of these.

```
ImageServerError                  base: message is written for the person who sent the request
  RequestError                    bad_request         bad field, unknown type, absurd size
  AccessDeniedError               access_denied       the request may not be served
    SessionError                  session_invalid     no such session, expired, bad signature
    EsafNotAllowedError           esaf_not_allowed    the session does not list the ESAF
    AccountError                  account_unusable    no Unix account or group, root, no home
  FrameError                      frame_error         the file or frame cannot become pixels
    FileMissingError              file_missing        (also FileNotFoundError)
    FileAccessError               permission_denied   (also PermissionError) the OS refused
    UnknownFormatError            unknown_format      no reader claimed the file
    CorruptFrameError             corrupt_frame       a reader claimed it but cannot decode it
    FrameRangeError               frame_out_of_range  the frame number is not in the file
    MissingMetadataError          missing_metadata    a field the view needs is absent
    FrameTooLargeError            too_large           beyond the configured size limits
    AnalysisError                 analysis_failed     spot finding refuses the frame (DIALS's)
  ResourceLimitError              out_of_memory       the worker's memory ceiling was reached
  CacheUnavailableError           cache_unavailable   Redis gone: log it and compute anyway
  SessionStoreUnavailableError    session_store_unavailable
  DeadlineError                   timeout             the request ran past its deadline
  WorkerError                     worker_failed       a worker crashed or could not start
  ConfigError                     config              the operator's settings or key files
  LocalServiceError               local_service       the local (demo/test) service failed
    EmbeddedRedisError                                no redis-server for it
  ReplyTimeoutError               timeout             a client waited for a reply in vain
  InternalError                   internal            a bug; details only in the server log
    LinkError                                         a worker broke the manager's protocol
```

``code`` is the stable, machine-readable name of each class (transports map it to a status);
``reason`` is an optional finer word for the audit log (``expired``, ``bad_signature``).
Foreign exceptions (h5py, fabio, OSError, ValueError) are translated where they enter, in
`formats/`, with the original kept as ``__cause__``; nothing above `formats/` sees them, and
the job boundary turns anything else into an `InternalError` whose text names no internals.
"""

from __future__ import annotations

from typing import ClassVar


class ImageServerError(Exception):
    """Base of every error the project raises on purpose."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.code

    @property
    def message(self) -> str:
        return str(self)


class RequestError(ImageServerError, ValueError):
    """The request itself is wrong: a field of the wrong type or out of range."""

    code = "bad_request"


class AccessDeniedError(ImageServerError):
    """The request may not be served to this session; ``login`` when it is known (audit log)."""

    code = "access_denied"

    def __init__(
        self, message: str = "", *, reason: str | None = None, login: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.login = login


class SessionError(AccessDeniedError):
    """The session token names no valid session: unknown, expired, forged or malformed."""

    code = "session_invalid"


class EsafNotAllowedError(AccessDeniedError):
    """The session is valid but does not allow the ESAF the request names."""

    code = "esaf_not_allowed"


class AccountError(AccessDeniedError):
    """The session's user cannot be run: no Unix account or ESAF group, root, or no home."""

    code = "account_unusable"


class FrameError(ImageServerError):
    """A file or frame could not be turned into pixels or metadata."""

    code = "frame_error"


class FileMissingError(FrameError, FileNotFoundError):
    """The image file, or a data file it links to, does not exist."""

    code = "file_missing"


class FileAccessError(FrameError, PermissionError):
    """The operating system refused to open the file for this user."""

    code = "permission_denied"


class UnknownFormatError(FrameError):
    """No reader recognised the file's content."""

    code = "unknown_format"


class CorruptFrameError(FrameError):
    """A reader recognised the file but its content is truncated or invalid."""

    code = "corrupt_frame"


class FrameRangeError(FrameError, IndexError):
    """The requested frame number is not in the file."""

    code = "frame_out_of_range"


class MissingMetadataError(FrameError):
    """The file lacks a header field that the requested operation needs."""

    code = "missing_metadata"


class FrameTooLargeError(FrameError):
    """The file would decompress or decode to more than the configured limits allow."""

    code = "too_large"


class AnalysisError(FrameError):
    """Spot finding refuses the frame, as DIALS does: e.g. too many strong pixels."""

    code = "analysis_failed"


class ResourceLimitError(ImageServerError):
    """The request needed more memory than the worker's ceiling; other requests go on."""

    code = "out_of_memory"


class CacheUnavailableError(ImageServerError):
    """The shared cache cannot be reached; callers compute without it."""

    code = "cache_unavailable"


class SessionStoreUnavailableError(ImageServerError):
    """The session Redis cannot be reached; the request is refused until it returns."""

    code = "session_store_unavailable"


class DeadlineError(ImageServerError):
    """The request was not answered within its deadline."""

    code = "timeout"


class BusyError(ImageServerError):
    """Too many requests of one session are waiting (the HTTP gateway's per-session queue)."""

    code = "busy"


class ChainError(ImageServerError):
    """An error reply of the chain as a client of it (the HTTP gateway) received it;
    ``wire_code`` is the code the chain sent (a typed reply), mapped to an HTTP status."""

    code = "chain_error"

    def __init__(self, wire_code: str = "internal", message: str = "") -> None:
        super().__init__(message, reason=wire_code)
        self.wire_code = wire_code


class IndexingInputError(RequestError):
    """The files or frames cannot be indexed as named; the message says why."""

    code = "bad_index_input"


class IndexingError(ImageServerError):
    """An index job that ends without a cell; ``result_code`` is one of the indexing
    contract's error codes (`indexing.contract.ERROR_CODES`)."""

    code = "indexing_failed"

    def __init__(self, result_code: str = "internal", message: str = "") -> None:
        super().__init__(message, reason=result_code)
        self.result_code = result_code


class Terminated(BaseException):
    """SIGTERM reached the indexer (its runner's deadline or a cancel): stop and give up."""


class JobUnknownError(ImageServerError):
    """No index job of that tag for this ESAF (never started, or its record expired)."""

    code = "job_unknown"


class CancelledError(ImageServerError):
    """The client cancelled the job (an index job, by its tag)."""

    code = "cancelled"


class WorkerError(ImageServerError):
    """A worker process crashed, hung or could not be started."""

    code = "worker_failed"


class ConfigError(ImageServerError, ValueError):
    """The configuration (file, key file, value) is wrong; the operator's fault, not a client's."""

    code = "config"


class LocalServiceError(ImageServerError):
    """The local service (demo, tests, benchmarks) did not start or one of its processes ended."""

    code = "local_service"


class EmbeddedRedisError(LocalServiceError):
    """No redis-server binary for the local service, or it would not start."""


class ReplyTimeoutError(ImageServerError, TimeoutError):
    """A client got no reply within its timeout (the server is down or overloaded)."""

    code = "timeout"


class InternalError(ImageServerError):
    """A bug: something no request should cause. The client sees a reference, the log the rest."""

    code = "internal"


class LinkError(InternalError, ValueError):
    """A manager–worker message that breaks the protocol: a bug, or a compromised worker."""


def all_error_classes() -> list[type[ImageServerError]]:
    """Every class of the tree, base first (for tests and for transports' code tables)."""
    found: list[type[ImageServerError]] = []
    pending: list[type[ImageServerError]] = [ImageServerError]
    while pending:
        cls = pending.pop(0)
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found

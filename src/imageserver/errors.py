"""The one error tree of the project; every failure a user can cause is one of these.

```
ImageServerError                 base: message is written for the person who sent the request
  RequestError                   the client's fault: bad field, unknown type, absurd size
  AccessDeniedError              no session, bad signature, ESAF not allowed
  FrameError                     the file or frame cannot be turned into pixels
    FileMissingError             (also FileNotFoundError) file or linked data file absent
    FileAccessError              (also PermissionError) the OS refused to open it
    UnknownFormatError           no reader claimed the file
    CorruptFrameError            a reader claimed it but could not decode it
    FrameRangeError              the frame number is outside the file's frames
    MissingMetadataError         a field the view needs (beam centre, bit depth) is absent
  CacheUnavailableError          Redis gone: log it and compute anyway
  WorkerError                    a worker crashed or did not start
```

Foreign exceptions (h5py, fabio, OSError) are translated where they enter, in `formats/`,
with the original kept as ``__cause__``; nothing above `formats/` sees them.
"""

from __future__ import annotations


class ImageServerError(Exception):
    """Base of every error the project raises on purpose."""


class RequestError(ImageServerError, ValueError):
    """The request itself is wrong: a field of the wrong type or out of range."""


class AccessDeniedError(ImageServerError):
    """The session does not allow this request."""


class FrameError(ImageServerError):
    """A file or frame could not be turned into pixels or metadata."""


class FileMissingError(FrameError, FileNotFoundError):
    """The image file, or a data file it links to, does not exist."""


class FileAccessError(FrameError, PermissionError):
    """The operating system refused to open the file for this user."""


class UnknownFormatError(FrameError):
    """No reader recognised the file's content."""


class CorruptFrameError(FrameError):
    """A reader recognised the file but its content is truncated or invalid."""


class FrameRangeError(FrameError, IndexError):
    """The requested frame number is not in the file."""


class MissingMetadataError(FrameError):
    """The file lacks a header field that the requested operation needs."""


class CacheUnavailableError(ImageServerError):
    """The shared cache cannot be reached; callers compute without it."""


class WorkerError(ImageServerError):
    """A worker process crashed, hung or could not be started."""

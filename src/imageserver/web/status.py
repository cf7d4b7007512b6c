"""Error code (errors.py, carried by typed wire replies) → HTTP status: one table."""

from __future__ import annotations

STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "bad_index_input": 400,
    "session_invalid": 401,
    "access_denied": 403,
    "esaf_not_allowed": 403,
    "account_unusable": 403,
    "permission_denied": 403,
    "file_missing": 404,
    "job_unknown": 404,
    "unknown_format": 422,
    "corrupt_frame": 422,
    "frame_out_of_range": 422,
    "missing_metadata": 422,
    "too_large": 422,
    "frame_error": 422,
    "cancelled": 409,
    "analysis_failed": 422,
    "indexing_failed": 422,
    "busy": 503,
    "session_store_unavailable": 503,
    "cache_unavailable": 503,
    "worker_failed": 503,
    "out_of_memory": 503,
    "timeout": 504,
}


def http_status(code: str) -> int:
    return STATUS_BY_CODE.get(code, 500)

"""The one error tree: every error class of the package lives in errors.py, with its own code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import imageserver
from imageserver import errors
from imageserver.errors import ImageServerError, all_error_classes


def package_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(imageserver.__path__, prefix="imageserver.")
        if not info.name.endswith("__main__") and info.name != errors.__name__
    ]


def test_every_public_exception_class_is_defined_in_errors() -> None:
    elsewhere = []
    for name in package_modules():
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attribute.startswith("_")
            ):
                elsewhere.append(f"{name}.{attribute}")
    assert elsewhere == []


def test_codes_are_stable_words_and_distinct_where_they_must_be() -> None:
    classes = all_error_classes()
    assert classes[0] is ImageServerError
    for cls in classes:
        assert cls.__module__ == errors.__name__
        assert cls.code.replace("_", "").isalpha() and cls.code.islower(), cls
    by_code: dict[str, list[str]] = {}
    for cls in classes:
        by_code.setdefault(cls.code, []).append(cls.__name__)
    # Subclasses that only refine the audit trail may share their parent's code.
    shared = {code: names for code, names in by_code.items() if len(names) > 1}
    assert shared == {
        "local_service": ["LocalServiceError", "EmbeddedRedisError"],
        "timeout": ["DeadlineError", "ReplyTimeoutError"],
        "internal": ["InternalError", "LinkError"],
    }


def test_the_reason_defaults_to_the_code_and_can_be_refined() -> None:
    assert errors.FileAccessError("x").reason == "permission_denied"
    refused = errors.SessionError("session abc has expired", reason="expired")
    assert (refused.code, refused.reason, str(refused)) == (
        "session_invalid",
        "expired",
        refused.message,
    )
    assert errors.EsafNotAllowedError("no", login="alice").login == "alice"

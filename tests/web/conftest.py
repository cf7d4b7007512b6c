"""Fixtures of the web tests (defined in `world`, which the test modules import from)."""

from world import web_world

__all__ = ["web_world"]

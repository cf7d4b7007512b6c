"""Fixtures of the web tests (defined in `world`, which the test modules import from)."""

from world import viewer_world, web_world

__all__ = ["viewer_world", "web_world"]

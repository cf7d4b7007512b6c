"""Sockets and wire frames: how requests reach the service and replies leave it."""

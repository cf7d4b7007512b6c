"""Caches of the costly step: a bounded LRU per worker and a Redis tier shared by an ESAF.

``keys`` builds every key; ``memory`` is the per-process LRU (``MemoryCache``); ``shared`` the
Redis tier (``SharedCache``, ``RedisLink``); ``tiered`` puts the first in front of the second;
``codec`` is the binary form of shared entries; ``acl`` gives each ESAF group its own Redis
user; ``renderer`` runs the two-step pipeline through all of them and says what is kept
where; docs/configuration.md ([cache]) has the settings.
"""

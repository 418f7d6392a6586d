"""Which configuration a cache belongs to: the cache records it, and no other configuration's run uses it.

PassagePoint has no endpoint to delete a pre-registration, so a configuration that runs with an
empty cache, or with another configuration's, registers bookings again. Exceptions (both
:class:`~libcal_passagepoint.cache.CacheError`): :class:`CacheLeftBehind`, a cache left in the
working directory that may be this configuration's; :class:`CacheOfAnotherConfiguration`.
"""

from __future__ import annotations

import logging
import os

from .cache import Cache, CacheError

__all__ = ["CacheLeftBehind", "CacheOfAnotherConfiguration", "check_no_cache_left_behind", "claim_cache"]

log = logging.getLogger("libcal_passagepoint")


class CacheLeftBehind(CacheError):
    """No cache beside the configuration, but the working directory holds one that may be its own."""


class CacheOfAnotherConfiguration(CacheError):
    """The cache records another configuration file than the one the run was given."""


def check_no_cache_left_behind(config_file: str, cache_path: str) -> None:
    """Raise CacheLeftBehind if there is no cache at *cache_path*, but the working directory holds one
    under the same relative name that is, or may be, this configuration's.

    Versions before this one resolved a relative LCPP.cache_path against the working directory (for
    cron, ``$HOME``): starting a new, empty cache beside the configuration instead would register
    every booking again in PassagePoint. A cache there that records another configuration is that
    configuration's, and is never offered to this one; one that records none was made by such a
    version and may be anybody's. *config_file* is the configuration's real path.
    """
    if os.path.exists(cache_path):
        return
    as_written = os.path.relpath(cache_path, os.path.dirname(config_file))
    earlier = os.path.abspath(as_written)
    if earlier == cache_path or not os.path.isfile(earlier):
        return
    try:
        with Cache(earlier, read_only=True, create=False) as found:
            owner = found.configuration
    except CacheError:  # not a cache of this tool: nothing to offer
        return
    if owner is None:
        raise CacheLeftBehind(
            f"no cache at {cache_path}, but {earlier} exists and records no configuration: versions before "
            "this one kept the cache in the working directory. If it is this configuration's, move it (with any "
            f"-wal file beside it) to {cache_path}; if it is another configuration's, run that one first (the "
            "cache then records it); or pass --cache to choose. Nothing was done"
        )
    if owner == config_file:
        raise CacheLeftBehind(
            f"no cache at {cache_path}, but {earlier} exists and records this configuration ({config_file}): "
            f"move it (with any -wal file beside it) to {cache_path}, or pass --cache to choose; nothing was done"
        )


def claim_cache(cache: Cache, config_file: str, *, given: bool) -> None:
    """Make *cache* the cache of *config_file* (its real path), or refuse it.

    A cache that records no configuration (new, or made by an earlier version) gets this one. One
    that records another is refused with CacheOfAnotherConfiguration, unless the operator named it
    (*given*: --cache): it then records this configuration from now on. A read-only cache (a dry
    run) is checked the same way and never written.
    """
    recorded = cache.configuration
    if recorded == config_file:
        return
    if recorded is not None and not given:
        raise CacheOfAnotherConfiguration(
            f"cache {cache.path} belongs to {recorded} (recorded in it), not to {config_file}: give this "
            f"configuration its own LCPP.cache_path, or, if it replaces {recorded} (moved or renamed), run once "
            f"with --cache {cache.path} to make the cache its own; nothing was done"
        )
    if cache.read_only:
        return
    cache.record_configuration(config_file)
    if recorded is not None:
        log.warning("cache %s belonged to %s; it now belongs to %s (given by --cache)", cache.path, recorded, config_file)

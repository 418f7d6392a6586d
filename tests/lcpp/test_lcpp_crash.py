"""Crash safety: the process dies between createPreReg and the cache write; the next pass reconciles."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from dataclasses import replace

from lcpp_sims import DAY, Sims

from libcal_passagepoint.cache import Cache

# A real process that runs one pass and dies (os._exit: no cleanup, no commit) right after
# PassagePoint answered createPreReg for the first booking, before the answer is saved.
DYING_PASS = textwrap.dedent(
    """
    import asyncio, os, sys
    from libcal_passagepoint.cache import Cache
    from libcal_passagepoint.config import load_config
    from libcal_passagepoint.runner import open_clients
    from libcal_passagepoint.sync import run_pass

    async def main():
        config = load_config(sys.argv[1])
        cache = Cache(config.cache_path)
        async with open_clients(config) as clients:
            await run_pass(config, libcal=clients.libcal, alma=clients.alma, passagepoint=clients.passagepoint,
                           cache=cache, date=sys.argv[2], concurrency=1,
                           on_prereg_created=lambda book_id, prereg_id: os._exit(9))

    asyncio.run(main())
    """
)


async def _die_after_first_prereg(sims: Sims) -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", DYING_PASS, str(sims.config_path), DAY)
    assert await asyncio.wait_for(process.wait(), 60) == 9


async def test_crash_between_prereg_and_cache_write_is_reported_not_duplicated(sims: Sims) -> None:
    """The open intent becomes 'uncertain' and is reported; no second createPreReg; other bookings proceed."""
    for n in (1, 2):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=10 + n)
    await _die_after_first_prereg(sims)
    assert len(sims.pp.preregs) == 1
    with Cache(sims.config.cache_path) as cache:
        assert cache.booking("cs_1")["state"] == "intent"
        assert cache.booking("cs_2") is None

    result = await sims.run()
    assert result.registered == ["cs_2"]
    assert [f.book_id for f in result.uncertain] == ["cs_1"]
    visitor = sims.pp.preregs[0]["visitorId"]
    assert result.uncertain[0].reason == (
        "the previous run stopped between createPreReg and saving its answer: check PassagePoint for a "
        f"pre-registration of visitor {visitor} at LibCal Gelman from 2030-01-15 16:15 UTC and create it "
        "by hand if it is missing"
    )
    assert result.exit_status == 1
    assert [p["visitorId"] for p in sims.pp.preregs].count(visitor) == 1

    again = await sims.run()
    assert again.uncertain == [] and again.exit_status == 0
    assert len(sims.pp.preregs) == 2
    with Cache(sims.config.cache_path) as cache:
        assert cache.booking("cs_1")["state"] == "uncertain"


async def test_reconcile_recreate_creates_again_and_may_duplicate(sims: Sims) -> None:
    """With LCPP.reconcile: recreate the open intent is simply retried: a duplicate is then possible (documented)."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    await _die_after_first_prereg(sims)
    result = await sims.run(config=replace(sims.config, reconcile="recreate"))
    assert result.registered == ["cs_1"] and result.uncertain == []
    assert len(sims.pp.preregs) == 2  # the crashed run's prereg did exist: now there are two

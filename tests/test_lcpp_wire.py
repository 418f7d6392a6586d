"""What the sync sends and how it reads the answers where the real services are uncertain: form
answers, destinations whose answer shape is not public, an Alma host that is not the API gateway."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiolimiter import AsyncLimiter
from test_lcpp_fixtures import GELMAN, Sims, sims  # noqa: F401 - the fixture

from libcal_passagepoint.alma import AlmaAuthError, AlmaClient
from libcal_passagepoint.config import Location
from libcal_passagepoint.sync import destination_check, lacks_form_answers

MAIN, SCIENCE = Location(1, "Main", "LibCal Main"), Location(2, "Science", "LibCal Science")


@pytest.mark.parametrize(
    ("known", "failing", "warned"),
    [
        (["LibCal Main", "LibCal Science", "Front Desk"], set(), False),  # both exist
        (["LibCal Main", "Front Desk"], {"LibCal Science"}, False),  # one positively absent: only it fails
        (None, set(), True),  # an answer not understood
        ([], set(), True),  # an empty list while bookings need destinations: not proof
        (["MAIN", "SCI"], set(), True),  # codes under the key read, display names elsewhere: misread
    ],
    ids=["all-present", "one-absent", "not-understood", "empty", "names-none-mapped"],
)
def test_only_a_destination_positively_absent_fails_its_bookings(known, failing, warned) -> None:
    missing, warning = destination_check(known, [MAIN, SCIENCE])
    assert set(missing) == failing
    assert (warning is not None) == warned
    if warned:
        assert "set LCPP.check_destinations: false" in warning
    for reason in missing.values():
        assert reason.startswith("destination 'LibCal Science' (PassagePoint.location_mapping for LibCal location 2) "
                                 "does not exist in PassagePoint")


@pytest.mark.parametrize(
    ("rows", "lacking"),
    [
        ([], False),  # nothing booked
        ([{"bookId": "a", "q12505": "G1"}, {"bookId": "b"}], False),  # one patron left it blank
        ([{"bookId": "a", "q12505": ""}], False),  # the question came back, unanswered
        ([{"bookId": "a"}, {"bookId": "b"}], True),  # no row has the question at all
    ],
)
def test_form_answers_are_missing_only_when_no_row_carries_the_question(rows, lacking) -> None:
    assert lacks_form_answers(rows, "q12505") is lacking


async def test_a_page_without_the_id_question_is_one_alert_not_a_failure_per_booking(sims: Sims) -> None:  # noqa: F811
    """LibCal answers with the answers of another question (a wrong primary_id_field, or a spelling of
    formAnswers the instance ignores): one message says what to check; no booking is failed or retried."""
    sims.libcal.form_answer_key = "q99999"
    for n in range(3):
        sims.add_patron(n)
        sims.add_booking(f"cs_{n}", f"G{n:08d}", hour=10 + n)
    result = await sims.run()
    assert result.failed == [] and result.registered == [] and result.exit_status == 1
    assert len(result.no_form_answers) == 1
    assert result.no_form_answers[0].startswith(
        f"LibCal returned 3 booking row(s) for location {GELMAN} (Gelman Library Study Spaces) and none carries "
        "q12505: LibCal did not send the form answers.")
    assert "formAnswers=1 (LibCal.form_answers_param)" in result.no_form_answers[0]
    assert sims.alma.count("/almaws") == 0 and sims.pp.count("/visit/createPreReg") == 0


async def test_an_html_401_from_alma_names_users_endpt_not_the_key(aiohttp_server: Any) -> None:
    """users_endpt pointing at the institution's Alma host (a login page) instead of the API gateway."""
    async def login_page(request: web.Request) -> web.Response:
        return web.Response(status=401, text="<!DOCTYPE html><html><body>Please sign in</body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", login_page)
    server = await aiohttp_server(app)
    users_url = str(server.make_url("/almaws/v1/users"))
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(session, users_url=users_url, api_keys=["k"], limiter=AsyncLimiter(100, 1))
        with pytest.raises(AlmaAuthError) as info:
            await client.lookup_user("G00000001")
    assert str(info.value) == (
        f"Alma.users_endpt {users_url} answered HTTP 401 with an HTML page, not an API error: it is probably the "
        "institution's Alma host; use the API gateway, e.g. https://api-na.hosted.exlibrisgroup.com/almaws/v1/users")
    assert "G00000001" not in str(info.value)


@pytest.mark.parametrize("shape", ["data-name", "list-name", "other-keys", "code-name", "empty", "not-json", "error",
                                   "not-found"])
async def test_no_shape_of_the_destinations_answer_blocks_registrations(shape: str, sims: Sims) -> None:  # noqa: F811
    """getDestinations' real shape is unknown: whatever the simulator answers, the bookings register."""
    sims.pp.destinations_shape = shape
    sims.add_patron(1)
    sims.add_booking("cs_1", "G00000001")
    result = await sims.run()
    assert (result.registered, result.failed) == (["cs_1"], [])


async def test_a_destination_missing_from_an_answer_that_names_the_others_fails_its_bookings(sims: Sims) -> None:  # noqa: F811
    sims.pp.destinations = ["LibCal Gelman"]  # LibCal Eckles is mapped but does not exist
    sims.add_patron(1)
    sims.add_patron(2)
    sims.add_booking("cs_1", "G00000001")
    sims.add_booking("cs_2", "G00000002", lid=9911)
    result = await sims.run()
    assert result.registered == ["cs_1"]
    assert [(f.book_id, f.kind) for f in result.failed] == [("cs_2", "destination")]


async def test_a_spelling_of_form_answers_that_libcal_ignores_is_one_alert(sims: Sims) -> None:  # noqa: F811
    """The strict LibCal simulator, like a LibCal that honours only formAnswers, ignores form_answers."""
    from dataclasses import replace

    sims.add_patron(1)
    sims.add_booking("cs_1", "G00000001")
    config = replace(sims.config, libcal=replace(sims.config.libcal, form_answers_param="form_answers"))
    result = await sims.run(config=config)
    assert result.failed == [] and len(result.no_form_answers) == 1
    assert "form_answers=1 (LibCal.form_answers_param)" in result.no_form_answers[0]
    sent = [r for r in sims.libcal.requests if r["path"].endswith("/space/bookings")]
    assert sent and all(r["query"].get("form_answers") == "1" for r in sent)
    assert (await sims.run()).registered == ["cs_1"]  # the default spelling: the answers come back

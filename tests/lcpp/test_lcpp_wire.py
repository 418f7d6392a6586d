"""What the sync sends and how it reads the answers where the real services are uncertain: form
answers, destinations whose answer shape is not public, an Alma host that is not the API gateway."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lcpp_sims import GELMAN, Sims

from alma import AlmaUnauthorized, SlidingWindowLimiter
from libcal_passagepoint.alma_users import AlmaUsers
from libcal_passagepoint.config import AlmaConfig, Location
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
        ([{"bookId": "a"}], False),  # one booking without it: maybe one patron's omission, failed on its own
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
    assert result.no_form_answers[GELMAN].startswith(
        f"LibCal returned 3 booking row(s) for location {GELMAN} (Gelman Library Study Spaces) and none carries "
        "q12505: LibCal did not send the form answers.")
    assert "formAnswers=1 (LibCal.form_answers_param)" in result.no_form_answers[GELMAN]
    assert sims.alma.count("/almaws") == 0 and sims.pp.count("/visit/createPreReg") == 0


@pytest.mark.parametrize("page", ["<!DOCTYPE html><html><body>Please sign in</body></html>",
                                  "<head><title>Sign in</title></head><body>Please sign in</body>",
                                  '<?xml version="1.0"?><html><body>Unauthorized</body></html>'])
async def test_an_html_401_from_alma_names_users_endpt_not_the_key(page: str, aiohttp_server: Any) -> None:
    """users_endpt pointing at the institution's Alma host (a login page) instead of the API gateway."""
    async def login_page(request: web.Request) -> web.Response:
        return web.Response(status=401, text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", login_page)
    server = await aiohttp_server(app)
    users_url = str(server.make_url("/almaws/v1/users"))
    async with aiohttp.ClientSession() as session:
        users = AlmaUsers.configured(AlmaConfig(apikeys=("k",), users_endpt=users_url), session,
                                     limiter=SlidingWindowLimiter(100), timeout=30)
        with pytest.raises(AlmaUnauthorized) as info:
            await users.lookup_user("G00000001")
    assert str(info.value) == (
        f"Alma.users_endpt {users_url} answered HTTP 401 with an HTML page, not an API error: it is probably the "
        "institution's Alma host; use the API gateway, e.g. https://api-na.hosted.exlibrisgroup.com/almaws/v1/users")
    assert "G00000001" not in str(info.value)


@pytest.mark.parametrize("shape", ["data-name", "list-name", "other-keys", "code-name", "empty", "not-json", "error",
                                   "not-found"])
async def test_no_shape_of_the_destinations_answer_blocks_registrations(
        shape: str, sims: Sims, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """getDestinations' real shape is unknown: whatever the simulator answers, the bookings register;
    an answer the tool cannot read is said once, and the check is really made."""
    sims.pp.destinations_shape = shape
    sims.add_patron(1)
    sims.add_booking("cs_1", "G00000001")
    result = await sims.run()
    assert (result.registered, result.failed) == (["cs_1"], [])
    assert sims.pp.count("/pp/api/v2/visit/getDestinations") >= 1
    warnings = [r.getMessage() for r in caplog.records if "destinations" in r.getMessage() and r.levelname == "WARNING"]
    assert len(warnings) == (0 if shape in ("data-name", "list-name", "other-keys") else 1), warnings


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

    for n in (1, 2):
        sims.add_patron(n)
        sims.add_booking(f"cs_{n}", f"G0000000{n}", hour=10 + n)
    config = replace(sims.config, libcal=replace(sims.config.libcal, form_answers_param="form_answers"))
    result = await sims.run(config=config)
    assert result.failed == [] and len(result.no_form_answers) == 1
    assert "form_answers=1 (LibCal.form_answers_param)" in result.no_form_answers[GELMAN]
    sent = [r for r in sims.libcal.requests if r["path"].endswith("/space/bookings")]
    assert sent and all(r["query"].get("form_answers") == "1" for r in sent)
    assert sorted((await sims.run()).registered) == ["cs_1", "cs_2"]  # the default spelling: the answers come back


ID, BARCODE, EMAIL = "G00000001", "22222000000001", "jane.doe@example.edu"


async def test_no_message_quotes_a_patrons_id_barcode_or_e_mail(aiohttp_server: Any) -> None:
    """Alma and PassagePoint error bodies that echo what they were sent are quoted scrubbed."""
    from alma import AlmaRequestError
    from libcal_passagepoint.passagepoint import PassagePointClient, PassagePointError

    async def alma(request: web.Request) -> web.Response:
        return web.json_response({"errorsExist": True, "errorList": {"error": [{"errorCode": "401652",
                                  "errorMessage": f"General Error: user {ID} (barcode {BARCODE}, {EMAIL})"}]}}, status=400)

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"token": "dG9rZW4="})

    async def create_visitor(request: web.Request) -> web.Response:
        return web.json_response({"error": f"Visitor with uniqueId {BARCODE} and mobile {ID} is invalid"}, status=200)

    app = web.Application()
    app.router.add_get("/almaws/v1/users/{id}", alma)
    app.router.add_post("/pp/auth/login", login)
    app.router.add_post("/pp/person/createVisitor", create_visitor)
    server = await aiohttp_server(app)
    messages = []
    async with aiohttp.ClientSession() as session:
        users = AlmaUsers.configured(AlmaConfig(apikeys=("k",), users_endpt=str(server.make_url("/almaws/v1/users"))),
                                     session, limiter=SlidingWindowLimiter(100), timeout=30)
        with pytest.raises(AlmaRequestError) as alma_error:
            await users.lookup_user(ID)
        messages.append(str(alma_error.value))
        pp = PassagePointClient(session, api_root=str(server.make_url("/pp")), username="u", password="p",
                                login_endpt="/auth/login", create_visitor_endpt="/person/createVisitor")
        with pytest.raises(PassagePointError) as pp_error:
            await pp.create_visitor(unique_id=BARCODE, first_name="Jane", last_name="Doe", email=EMAIL,
                                    category="Student", mobile_phone=ID)
        messages.append(str(pp_error.value))
    assert messages[0] == "Alma users API answered HTTP 400: 401652 General Error: user [id] (barcode [id], [email])"
    assert messages[1] == "PassagePoint createVisitor failed: Visitor with uniqueId [id] and mobile [id] is invalid"


def test_a_booking_without_a_name_is_not_named_by_its_e_mail_address() -> None:
    from libcal_passagepoint.libcal import parse_bookings

    rows = [{"bookId": "cs_1", "lid": 1, "fromDate": "2030-01-15T10:00:00-05:00", "toDate": "2030-01-15T11:00:00-05:00",
             "firstName": "", "lastName": "", "email": EMAIL, "status": "Confirmed", "q12505": "g00000001"}]
    (booking,), _ = parse_bookings(rows, "q12505")
    assert booking.patron == "no name given"
    assert booking.primary_id == "G00000001"  # a lower-case prefix upper-cased, as the original did


async def test_a_401_for_the_optional_destinations_check_does_not_stop_the_pass(sims: Sims) -> None:  # noqa: F811
    """getDestinations refused (HTTP 401 even with a fresh login): a warning, and the bookings register."""
    from libcal_passagepoint.passagepoint import PassagePointAuthError, PassagePointClient

    sims.add_patron(1)
    sims.add_booking("cs_1", "G00000001")

    async def refused(self: PassagePointClient) -> list[str] | None:
        raise PassagePointAuthError("PassagePoint getDestinations rejected a fresh login token (HTTP 401 twice)")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PassagePointClient, "get_destinations", refused)
        result = await sims.run()
    assert (result.registered, result.failed) == (["cs_1"], [])


def test_the_lock_file_is_owner_only_whatever_the_umask(tmp_path) -> None:
    import os
    import stat

    from libcal_passagepoint.runner import cache_lock

    previous = os.umask(0)
    try:
        with cache_lock(str(tmp_path / "c.sqlite3")):
            mode = stat.S_IMODE(os.stat(tmp_path / "c.sqlite3.lock").st_mode)
    finally:
        os.umask(previous)
    assert mode == 0o600

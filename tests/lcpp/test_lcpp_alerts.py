"""Alert e-mail against a real SMTP server on loopback (aiosmtpd): one message per kind per interval."""

from __future__ import annotations

import email
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from lcpp_sims import Sims

from libcal_passagepoint.alerts import EmailAlerts
from libcal_passagepoint.cache import Cache
from libcal_passagepoint.config import EmailConfig


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append(email.message_from_bytes(envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def _text(message: email.message.Message) -> str:
    return message.get_payload(decode=True).decode("utf-8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    """A real SMTP server on 127.0.0.1 collecting every message."""
    inbox = _Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_failures_are_mailed_once_per_kind_per_interval(sims: Sims, smtp: tuple[_Inbox, int]) -> None:
    """Two failed bookings -> one message naming both; a new failure within the interval -> no message; after it -> one."""
    inbox, port = smtp
    email_config = EmailConfig(
        from_email="lcpp@example.edu", to_email=("desk@example.edu", "it@example.edu"),
        smtp_host="127.0.0.1", smtp_port=port, starttls=False, from_username=None, from_password=None,
    )
    config = replace(sims.config, email=email_config)
    clock = _Clock(time.time())
    cache = Cache(sims.config.cache_path, clock=clock)
    alerts = EmailAlerts(email_config, cache, interval=300)
    sims.add_booking("cs_noid", "not an id!", first_name="No", last_name="Id")
    sims.add_booking("cs_ghost", "G99999999", first_name="Gus", last_name="Ghost", hour=16)
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 1
    message = inbox.messages[0]
    assert message["Subject"] == "[LibCal-PassagePoint] 2 LibCal booking(s) could not be pre-registered"
    assert inbox.envelopes[0] == ("lcpp@example.edu", ["desk@example.edu", "it@example.edu"])
    body = _text(message)
    assert ("cs_noid (No Id): the answer to q12505 is not a well-formed university id (LCPP.primary_id_pattern): "
            "correct it in the LibCal booking") in body
    assert "cs_ghost (Gus Ghost): no Alma user has this university id (tried 2 institution zones)" in body
    assert "G99999999" not in body  # never a university id in an alert

    clock.now += 60
    sims.add_booking("cs_new", "not an id!", first_name="New", last_name="Failure", hour=18)
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 1  # same kind within the interval: throttled

    clock.now += 300
    sims.add_booking("cs_later", "not an id!", first_name="Later", last_name="Failure", hour=19)
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 2
    assert "cs_later (Later Failure)" in _text(inbox.messages[1])
    assert "cs_noid" not in _text(inbox.messages[1])  # reported once, not on every interval
    cache.close()


async def test_throttled_failures_are_held_and_sent_later_not_dropped(sims: Sims, smtp: tuple[_Inbox, int]) -> None:
    """A failure whose alert falls within the interval (a cron pass finishing a little sooner than the last
    one) is not lost: it is held, and mailed once the interval has passed, even if nothing new failed."""
    inbox, port = smtp
    email_config = EmailConfig(from_email="lcpp@example.edu", to_email=("desk@example.edu",), smtp_host="127.0.0.1",
                               smtp_port=port, starttls=False)
    config = replace(sims.config, email=email_config)
    clock = _Clock(time.time())
    cache = Cache(sims.config.cache_path, clock=clock)
    alerts = EmailAlerts(email_config, cache, interval=300)
    sims.add_booking("cs_first", "not an id!", first_name="First", last_name="Failure")
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 1

    clock.now += 299
    sims.add_booking("cs_held", "not an id!", first_name="Held", last_name="Back", hour=16)
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 1  # throttled: held, not sent

    clock.now += 301  # nothing new fails in this pass
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 2
    assert " ".join(inbox.messages[1]["Subject"].split()) == (  # a long subject is folded
        "[LibCal-PassagePoint] Held back by the alert limit: 1 LibCal booking(s) could not be pre-registered")
    body = _text(inbox.messages[1])
    assert "cs_held (Held Back): the answer to q12505 is not a well-formed university id" in body
    assert "cs_first" not in body

    clock.now += 301
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 2  # sent once
    cache.close()


async def test_held_failures_go_out_with_the_next_message_of_their_kind(sims: Sims, smtp: tuple[_Inbox, int]) -> None:
    """When a new failure of the same kind is mailed, the held ones are in the same message."""
    inbox, port = smtp
    email_config = EmailConfig(from_email="lcpp@example.edu", to_email=("desk@example.edu",), smtp_host="127.0.0.1",
                               smtp_port=port, starttls=False)
    config = replace(sims.config, email=email_config)
    clock = _Clock(time.time())
    cache = Cache(sims.config.cache_path, clock=clock)
    alerts = EmailAlerts(email_config, cache, interval=300)
    sims.add_booking("cs_first", "not an id!", first_name="First", last_name="Failure")
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    clock.now += 100
    sims.add_booking("cs_held", "not an id!", first_name="Held", last_name="Back", hour=16)
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    clock.now += 250
    sims.add_booking("cs_new", "not an id!", first_name="New", last_name="One", hour=18)
    await sims.run(cache, config=config, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 2
    assert inbox.messages[1]["Subject"] == "[LibCal-PassagePoint] 1 LibCal booking(s) could not be pre-registered"
    body = _text(inbox.messages[1])
    assert "cs_new (New One)" in body and "cs_held (Held Back)" in body and "cs_first" not in body
    assert body.index("cs_new") < body.index("Held back by the alert limit since the last message:") < body.index("cs_held")
    cache.close()


async def test_unreachable_smtp_server_is_logged_not_raised(sims: Sims, caplog: pytest.LogCaptureFixture) -> None:
    """An alert that cannot be sent never breaks the pass."""
    port = _free_port()  # nothing listens there
    email_config = EmailConfig(from_email="a@example.edu", to_email=("b@example.edu",), smtp_host="127.0.0.1",
                               smtp_port=port, starttls=False)
    with Cache(sims.config.cache_path) as cache:
        await EmailAlerts(email_config, cache, interval=300, timeout=2).notify("booking_failed", "subject", ["line"])
        assert cache.alert_due("booking_failed", interval=300)
    assert f"could not send the alert e-mail via 127.0.0.1:{port}" in caplog.text


async def test_missing_form_answers_are_mailed_when_they_start_not_every_pass(sims: Sims, smtp: tuple[_Inbox, int]) -> None:
    """A location whose bookings come without the id question's answers: one message when it starts;
    the passes after it (the problem unchanged) log it and exit 1 but mail nothing more; once the
    answers come back and then go missing again, a new message."""
    inbox, port = smtp
    email_config = EmailConfig(from_email="lcpp@example.edu", to_email=("desk@example.edu",), smtp_host="127.0.0.1",
                               smtp_port=port, starttls=False)
    config = replace(sims.config, email=email_config)
    clock = _Clock(time.time())
    cache = Cache(sims.config.cache_path, clock=clock)
    alerts = EmailAlerts(email_config, cache, interval=300)
    for n in (1, 2, 3):
        sims.add_patron(n)
        sims.add_booking(f"cs_{n}", f"G0000000{n}", hour=10 + n)
    ignored = replace(config, libcal=replace(config.libcal, form_answers_param="form_answers"))  # LibCal ignores it
    for _ in range(3):
        result = await sims.run(cache, config=ignored, alerts=alerts, now=clock.now)
        assert result.exit_status == 1
        clock.now += 301
    assert [" ".join(m["Subject"].split()) for m in inbox.messages] == [  # a long subject is folded
        "[LibCal-PassagePoint] LibCal sent bookings without the id question's answers"]
    registered = (await sims.run(cache, config=config, alerts=alerts, now=clock.now)).registered
    assert sorted(registered) == ["cs_1", "cs_2", "cs_3"]  # registered concurrently: in the order they finish
    clock.now += 301
    sims.add_booking("cs_4", "G00000003", hour=15)
    await sims.run(cache, config=ignored, alerts=alerts, now=clock.now)
    assert len(inbox.messages) == 2
    cache.close()

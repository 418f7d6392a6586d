"""Optional alert e-mail over SMTP: at most one message per kind of failure per interval.

The time of the last message of each kind is kept in the cache, so the limit holds across cron runs
as well as within ``run --every``. Lines the limit holds back (or that a failing mail server could
not take) are kept in the cache too and go out with the next message of their kind, or on their own
(``flush``) once the interval has passed: nothing is dropped. A message that cannot be sent is
logged, never raised: alerting must not break a pass. Exceptions: none escape; SMTP errors are
logged as warnings.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage

from .cache import Cache
from .config import EmailConfig

__all__ = ["EmailAlerts", "build_message"]

log = logging.getLogger("libcal_passagepoint")


def build_message(config: EmailConfig, subject: str, lines: list[str], held: list[str] | None = None) -> EmailMessage:
    """The alert e-mail for *subject* with one line per affected booking, then the lines held back before."""
    message = EmailMessage()
    message["From"] = config.from_email
    message["To"] = ", ".join(config.to_email)
    message["Subject"] = f"[LibCal-PassagePoint] {subject}"
    body = [subject + ":", "", *lines]
    if held:
        body += ["", "Held back by the alert limit since the last message:", "", *held]
    message.set_content("\n".join([*body, "", "Run `python -m libcal_passagepoint status` for details."]))
    return message


class EmailAlerts:
    """Sends alert e-mails, throttled per kind by the cache's alert log."""

    def __init__(self, config: EmailConfig, cache: Cache, *, interval: float, timeout: float = 30.0) -> None:
        self._config = config
        self._cache = cache
        self._interval = interval
        self._timeout = timeout

    def _send(self, message: EmailMessage) -> None:
        config = self._config
        with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=self._timeout) as smtp:
            smtp.ehlo()
            if config.starttls:
                smtp.starttls()
                smtp.ehlo()
            if config.from_username and config.from_password and smtp.has_extn("auth"):
                smtp.login(config.from_username, config.from_password)
            smtp.send_message(message)

    async def notify(self, kind: str, subject: str, lines: list[str]) -> None:
        """Send one message (with the lines held for this kind) unless one went out within the interval."""
        if not self._cache.alert_due(kind, interval=self._interval):
            log.info("alert %r held: one was sent less than %ss ago; it goes out with the next one", kind, int(self._interval))
            self._cache.hold_alert(kind, subject, lines)
            return
        held = self._cache.held_alerts().get(kind, ([], []))[1]
        if not await self._deliver(build_message(self._config, subject, lines, held)):
            self._cache.hold_alert(kind, subject, lines)
            return
        self._cache.alert_sent(kind)

    async def flush(self) -> None:
        """Send the held lines of every kind whose interval has passed (called once per pass)."""
        for kind, (subjects, lines) in self._cache.held_alerts().items():
            if self._cache.alert_due(kind, interval=self._interval):
                subject = "Held back by the alert limit: " + "; ".join(subjects)
                if await self._deliver(build_message(self._config, subject, lines)):
                    self._cache.alert_sent(kind)

    async def _deliver(self, message: EmailMessage) -> bool:
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("could not send the alert e-mail via %s:%s: %s", self._config.smtp_host, self._config.smtp_port, exc)
            return False
        return True

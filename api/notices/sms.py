"""Where resident SMS go. The default logs them; a utility plugs in its SMS gateway here."""

from __future__ import annotations

import logging
from typing import Protocol

from api.settings import Settings

log = logging.getLogger("steward.sms")


class SmsSender(Protocol):
    """Sends one text message; returns whether the gateway accepted it."""

    def send(self, phone: str, text: str) -> bool: ...


class LoggingSender:
    """Writes each message to the log instead of sending it (development and demos)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, phone: str, text: str) -> bool:
        log.info("sms to %s: %s", phone, text)
        self.sent.append((phone, text))
        return True


def make_sender(settings: Settings) -> SmsSender:
    """The sender named by `STEWARD_SMS_SENDER`."""
    if settings.sms_sender == "log":
        return LoggingSender()
    raise ValueError(f"unknown SMS sender {settings.sms_sender!r}")

"""Where resident SMS go. The default logs them; `http` posts each one to the utility's SMS gateway."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from api.settings import Settings
from speech.redact import redact_phone

log = logging.getLogger("steward.sms")


class SmsSender(Protocol):
    """Sends one text message; returns whether the gateway accepted it."""

    def send(self, phone: str, text: str) -> bool: ...


@dataclass(frozen=True)
class SendResult:
    """What happened to one message: accepted, or refused with a reason worth recording."""

    ok: bool
    reason: str = ""


class LoggingSender:
    """Writes each message to the log instead of sending it (development and demos). `sent` keeps the last
    `KEPT` messages (phone, text) for a test or a developer to look at: a list of every one grew for the life of
    the process, and `log` is the default sender (a season's notices to a district are millions of messages)."""

    KEPT = 1000

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, phone: str, text: str) -> bool:
        # The number masked by its shape and no text at INFO: a message names the resident and the address
        # (DEBUG shows it, for a developer checking the wording).
        log.info("sms to %s (%d characters)", redact_phone(phone), len(text))
        log.debug("sms text to %s: %s", redact_phone(phone), text)
        self.sent.append((phone, text))
        if len(self.sent) > self.KEPT:
            del self.sent[0]
        return True


class HttpSender:
    """Posts `{"phone", "text", "ref"}` as JSON to a gateway URL with `Authorization: Bearer <key>`.

    Any 2xx answer is an acceptance unless its JSON body says `{"ok": false, "error": ...}`. `ref` is the
    caller's id of the message (`<delivery id>:<phone>`): a gateway that deduplicates on it makes a
    retry after a crash harmless. `close()` releases the connection pool (idempotent).
    """

    def __init__(self, url: str, key: str, *, timeout_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def send_detailed(self, phone: str, text: str, *, ref: str | None = None) -> SendResult:
        """Send one message and say why it failed, if it did."""
        try:
            response = self._client.post(self.url, json={"phone": phone, "text": text, "ref": ref})
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # never reached the gateway
            return SendResult(False, f"gateway unreachable: {type(exc).__name__}: {exc}"[:500])
        except httpx.TimeoutException as exc:
            # The gateway may have taken it all the same: the retry carries the same ref, which a gateway that
            # deduplicates on it drops (docs/proactive.md); one that does not texts the resident twice.
            return SendResult(False, f"gateway timed out (the message may have gone out): {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return SendResult(False, f"gateway unreachable: {type(exc).__name__}: {exc}"[:500])
        if response.status_code >= 300:
            return SendResult(False, f"gateway answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("ok") is False:
            return SendResult(False, f"gateway refused the message: {str(body.get('error', ''))[:200]}")
        return SendResult(True)

    def send(self, phone: str, text: str) -> bool:
        result = self.send_detailed(phone, text)
        if not result.ok:
            log.warning("sms to %s failed: %s", phone, result.reason)
        return result.ok

    def close(self) -> None:
        self._client.close()


def deliver(sender: SmsSender, phone: str, text: str, *, ref: str | None = None) -> SendResult:
    """Send through any sender: its detailed API when it has one, else `send` (an exception is a failure)."""
    detailed = getattr(sender, "send_detailed", None)
    try:
        if detailed is not None:
            result: SendResult = detailed(phone, text, ref=ref)
            return result
        ok = sender.send(phone, text)
    except Exception as exc:  # a plug-in sender's bug must fail one message, not the whole campaign
        log.exception("sms sender raised")
        return SendResult(False, f"sender error: {type(exc).__name__}: {exc}"[:500])
    return SendResult(True) if ok else SendResult(False, "the SMS sender refused the message")


def make_sender(settings: Settings) -> SmsSender:
    """The sender named by `STEWARD_SMS_SENDER`."""
    if settings.sms_sender == "log":
        return LoggingSender()
    if settings.sms_sender == "http":
        return HttpSender(settings.sms_http_url, settings.sms_http_key, timeout_s=settings.sms_http_timeout_s)
    raise ValueError(f"unknown SMS sender {settings.sms_sender!r}")

"""The watch's notifier against real receivers on loopback: a JSON webhook (stdlib http.server) that
can answer 500 a few times, an SMTP server (aiosmtpd), a closed port; and the redaction of secrets
from URLs, delivery records, event lines and apprise's own log records."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller
from watch_support import Webhook, free_port

from etlverify.watch.notify import Delivery, Notification, Notifier, NotifyError, redact

if TYPE_CHECKING:
    from collections.abc import Iterator

SECRET = "s3cr3tT0kenXy9Qw"
SECRET2 = "Pa55wordZz81"
SECRET3 = "qUeRyT0ken4242"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A webhook receiver answering 200; stopped after the test."""
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def flaky_webhook() -> Iterator[Webhook]:
    """A webhook receiver answering 500 twice, then 200."""
    hook = Webhook([500, 500])
    yield hook
    hook.close()


def _note(n: int, kind: str = "status") -> Notification:
    return Notification(
        kind=kind,
        key=f"{kind}-{n}",
        title=f"watch update {n}",
        body=f"elapsed {n} min\nerror rate 0.0%\np95 12 ms",
    )


def _texts(deliveries: list[Delivery], events: list[str]) -> str:
    return json.dumps([d.to_json() for d in deliveries]) + "\n".join(events)


def test_json_webhook_receives_notifications_in_order(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"json://127.0.0.1:{webhook.port}/hooks/{SECRET}"
    events: list[str] = []
    notifier = Notifier([url], on_event=events.append, timeout_s=5)
    try:
        for n in range(3):
            notifier.send(_note(n))
        notifier.send(_note(0))  # the same key again: ignored
        assert notifier.flush(10)
    finally:
        notifier.close(5)
    assert [payload["title"] for _, payload in webhook.received] == [
        "watch update 0",
        "watch update 1",
        "watch update 2",
    ]
    assert all(path == f"/hooks/{SECRET}" for path, _ in webhook.received)
    assert webhook.received[1][1]["message"] == _note(1).body
    deliveries = notifier.deliveries()
    assert [(d.key, d.attempts, d.delivered, d.error) for d in deliveries] == [
        (f"status-{n}", 1, True, None) for n in range(3)
    ]
    assert deliveries[0].url == f"json://127.0.0.1:{webhook.port}/hooks/***"
    assert deliveries[0].first_attempt_at.endswith("Z")
    assert notifier.failed == 0
    assert events == []
    # apprise's own records (DEBUG included) never reached a handler of the caller
    assert [r for r in caplog.records if r.name.startswith(("apprise", "urllib3"))] == []


def test_email_arrives_over_smtp_with_title_as_subject() -> None:
    messages: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            messages.append(envelope.content)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, ready_timeout=5)
    controller.start()
    try:
        url = f"mailto://127.0.0.1:{port}?from=watch@example.com&to=ops@example.com&mode=insecure"
        notifier = Notifier([url], timeout_s=5)
        notifier.send(_note(1, kind="completion"))
        assert notifier.flush(10)
        notifier.close(5)
    finally:
        controller.stop()
    assert len(messages) == 1
    message = email.message_from_bytes(messages[0], policy=email.policy.default)
    assert message["Subject"] == "watch update 1"
    assert "ops@example.com" in str(message["To"])
    assert notifier.deliveries()[0].delivered


def test_server_errors_are_retried_until_delivered(flaky_webhook: Webhook) -> None:
    events: list[str] = []
    url = f"json://127.0.0.1:{flaky_webhook.port}/notify"
    notifier = Notifier([url], on_event=events.append, attempts=5, backoff_s=0.05, timeout_s=5)
    notifier.send(_note(1, kind="trigger"))
    assert notifier.flush(10)
    notifier.close(5)
    (delivery,) = notifier.deliveries()
    assert (delivery.attempts, delivery.delivered, delivery.error) == (3, True, None)
    assert flaky_webhook.requests == 3
    assert len(flaky_webhook.received) == 1
    assert events == [
        f"notify: {url} failed (attempt 1 of 5): HTTP 500 Internal server error; "
        "retrying in 0.05 s",
        f"notify: {url} failed (attempt 2 of 5): HTTP 500 Internal server error; retrying in 0.1 s",
    ]


def test_closed_port_gives_up_without_blocking_or_raising(
    webhook: Webhook, capfd: pytest.CaptureFixture[str]
) -> None:
    events: list[str] = []
    dead = f"json://watch:{SECRET2}@127.0.0.1:{free_port()}/hooks/{SECRET}?token={SECRET3}"
    live = f"json://127.0.0.1:{webhook.port}/notify"
    notifier = Notifier([dead, live], on_event=events.append, attempts=3, backoff_s=0.05)
    started = time.monotonic()
    notifier.send(_note(1, kind="start"))
    notifier.send(_note(2))
    assert time.monotonic() - started < 0.5  # queued, not delivered, on the caller's thread
    assert notifier.flush(15)
    notifier.close(5)
    deliveries = notifier.deliveries()
    assert [(d.key, d.url == redact(dead)) for d in deliveries] == [
        ("start-1", True),
        ("start-1", False),
        ("status-2", True),
        ("status-2", False),
    ]
    dead_ones = [d for d in deliveries if d.url == redact(dead)]
    assert all((d.attempts, d.delivered) == (3, False) for d in dead_ones)
    assert [d.error for d in dead_ones] == ["connection refused"] * 2
    # the dead URL did not hold the live one back
    assert len(webhook.received) == 2
    assert notifier.failed == 2
    assert len(events) == 6
    assert events[0] == (
        f"notify: {redact(dead)} failed (attempt 1 of 3): connection refused; retrying in 0.05 s"
    )
    assert events[2] == (
        f"notify: {redact(dead)} gave up on start 'start-1' after 3 attempts: connection refused"
    )
    everything = _texts(deliveries, events) + "".join(capfd.readouterr())
    for secret in (SECRET, SECRET2, SECRET3):
        assert secret not in everything


def test_close_records_what_was_never_sent() -> None:
    dead = f"json://127.0.0.1:{free_port()}/notify"
    notifier = Notifier([dead], attempts=5, backoff_s=30)
    notifier.send(_note(1))
    notifier.send(_note(2))
    notifier.close(1)
    first, second = notifier.deliveries()
    assert not first.delivered
    assert first.error is not None
    assert "closed" in first.error
    assert (second.attempts, second.error) == (0, "not sent: the notifier closed first")
    assert notifier.failed == 2
    notifier.send(_note(3))  # after close: recorded, never raised
    assert notifier.deliveries()[-1].error == "not sent: the notifier was already closed"


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        (f"json://watch:{SECRET2}@127.0.0.1:8080/notify", [SECRET2]),
        (f"mailto://ops:{SECRET2}@127.0.0.1:2525?from=w@example.com&to=o@example.com", [SECRET2]),
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general", ["T1JJ3T3L2", "TIiajk"]),
        (
            "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
            ["T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ"],
        ),
        ("tgram://123456789:abcdefg_hijklmnop/12315544/", ["abcdefg_hijklmnop", "123456789"]),
        (f"json://127.0.0.1:8080/notify?token={SECRET3}&format=text", [SECRET3]),
        (f"json://127.0.0.1:8080/notify?+Authorization=Bearer%20{SECRET}", [SECRET]),
        (f"json://127.0.0.1:8080/hooks/{SECRET}", [SECRET]),
    ],
)
def test_redact_removes_every_secret(url: str, secrets: list[str]) -> None:
    redacted = redact(url)
    assert "***" in redacted
    for secret in secrets:
        assert secret not in redacted
    assert redacted.partition("://")[0] == url.partition("://")[0]


@pytest.mark.parametrize(
    "url",
    [
        "json://127.0.0.1:8080/notify",
        "json://127.0.0.1:8080/notify?format=text",
        "mailto://127.0.0.1:2525?from=watch@example.com&to=ops@example.com",
    ],
)
def test_redact_leaves_a_url_without_secrets_unchanged(url: str) -> None:
    assert redact(url) == url


def test_malformed_url_is_one_line_notify_error() -> None:
    with pytest.raises(NotifyError) as info:
        Notifier([f"xyz://{SECRET}/path"])
    message = str(info.value)
    assert message == "unsupported or malformed notification URL 'xyz://***'"
    with pytest.raises(NotifyError) as info:
        Notifier([f"slack://{SECRET}"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unsupported or malformed notification URL 'slack://***'")
    assert SECRET not in message


def test_other_threads_apprise_records_keep_their_level(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier([f"json://127.0.0.1:{webhook.port}/notify"])
    notifier.close(1)
    caplog.set_level(logging.WARNING)  # the root logger at WARNING, as an application sets it
    caplog.handler.setLevel(logging.DEBUG)  # a handler that would take anything it is given
    logging.getLogger("apprise").debug("a debug line of someone else")
    logging.getLogger("apprise").warning("a warning of someone else")
    assert [r.getMessage() for r in caplog.records if r.name == "apprise"] == [
        "a warning of someone else"
    ]

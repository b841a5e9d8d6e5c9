"""The gateway's signature schemes against the vendors' published vectors, rotation, tampering,
missing headers and the replay window; the payload -> envelope mapping; the settings' shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.sources.gateway import events
from streams.sources.gateway.events import PayloadError
from streams.sources.gateway.settings import GatewaySettings
from streams.sources.gateway.signatures import (
    SignatureError,
    decode_whsec,
    github_signature,
    slack_signature,
    standard_signature,
    verify_github,
    verify_slack,
    verify_standard,
)

# GitHub: docs.github.com "Validating webhook deliveries"
GH_SECRET = b"It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# Slack: api.slack.com "Verifying requests from Slack"
SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TS = "1531420618"
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

# Standard Webhooks: the specification's reference example
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = "1614265330"
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def frozen(at: float) -> Callable[[], float]:
    return lambda: at


def reason(exc: pytest.ExceptionInfo[SignatureError]) -> str:
    return exc.value.reason


# -- GitHub -----------------------------------------------------------------------------------
def test_github_documented_vector() -> None:
    assert github_signature(GH_SECRET, GH_BODY) == GH_SIGNATURE
    verify_github([GH_SECRET], GH_BODY, GH_SIGNATURE)


def test_github_rotation_accepts_old_and_new_secret() -> None:
    new = b"the new secret"
    verify_github([new, GH_SECRET], GH_BODY, GH_SIGNATURE)  # sender still on the old one
    verify_github([new, GH_SECRET], GH_BODY, github_signature(new, GH_BODY))
    with pytest.raises(SignatureError) as exc:
        verify_github([new], GH_BODY, GH_SIGNATURE)  # old one retired
    assert reason(exc) == "bad_signature"


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        (b"Hello, World?", GH_SIGNATURE, "bad_signature"),  # tampered body
        (GH_BODY, GH_SIGNATURE.replace("sha256=", "sha1="), "bad_signature"),
        (GH_BODY, GH_SIGNATURE[:-2], "bad_signature"),
        (GH_BODY, None, "missing_signature"),
        (GH_BODY, "", "missing_signature"),
    ],
)
def test_github_refusals(body: bytes, header: str | None, expected: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify_github([GH_SECRET], body, header)
    assert reason(exc) == expected


def test_github_without_secret_fails_closed() -> None:
    with pytest.raises(SignatureError) as exc:
        verify_github([], GH_BODY, GH_SIGNATURE)
    assert reason(exc) == "not_configured"


# -- Slack ------------------------------------------------------------------------------------
def test_slack_documented_example_with_the_clock_frozen() -> None:
    assert slack_signature(SLACK_SECRET, SLACK_TS, SLACK_BODY) == SLACK_SIGNATURE
    verify_slack([SLACK_SECRET], SLACK_BODY, SLACK_TS, SLACK_SIGNATURE, now=frozen(1531420618))


def test_slack_documented_example_is_stale_with_the_real_clock() -> None:
    with pytest.raises(SignatureError) as exc:
        verify_slack([SLACK_SECRET], SLACK_BODY, SLACK_TS, SLACK_SIGNATURE)
    assert reason(exc) == "stale"


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(-301, "stale"), (-299, None), (299, None), (301, "future")],
)
def test_slack_window_both_ways(offset: int, expected: str | None) -> None:
    now = 1_700_000_000
    ts = str(now + offset)
    signature = slack_signature(SLACK_SECRET, ts, b"{}")
    if expected is None:
        verify_slack([SLACK_SECRET], b"{}", ts, signature, now=frozen(now))
        return
    with pytest.raises(SignatureError) as exc:
        verify_slack([SLACK_SECRET], b"{}", ts, signature, now=frozen(now))
    assert reason(exc) == expected


@pytest.mark.parametrize(
    ("body", "ts", "signature", "expected"),
    [
        (SLACK_BODY + b"x", SLACK_TS, SLACK_SIGNATURE, "bad_signature"),  # tampered
        (SLACK_BODY, "1531420619", SLACK_SIGNATURE, "bad_signature"),  # timestamp not the signed one
        (SLACK_BODY, None, SLACK_SIGNATURE, "missing_header"),
        (SLACK_BODY, SLACK_TS, None, "missing_signature"),
        (SLACK_BODY, "15314e0618", SLACK_SIGNATURE, "bad_signature"),
        (SLACK_BODY, "9" * 40, SLACK_SIGNATURE, "bad_signature"),
    ],
)
def test_slack_refusals(body: bytes, ts: str | None, signature: str | None, expected: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify_slack([SLACK_SECRET], body, ts, signature, now=frozen(1531420618))
    assert reason(exc) == expected


def test_slack_rotation() -> None:
    clock = frozen(1531420618)
    verify_slack([b"new", SLACK_SECRET], SLACK_BODY, SLACK_TS, SLACK_SIGNATURE, now=clock)
    new_sig = slack_signature(b"new", SLACK_TS, SLACK_BODY)
    verify_slack([b"new", SLACK_SECRET], SLACK_BODY, SLACK_TS, new_sig, now=clock)


# -- Standard Webhooks ------------------------------------------------------------------------
def test_standard_webhooks_reference_vector() -> None:
    key = decode_whsec(SW_SECRET)
    assert standard_signature(key, SW_ID, SW_TS, SW_BODY) == SW_SIGNATURE
    verify_standard([key], SW_BODY, SW_ID, SW_TS, SW_SIGNATURE, now=frozen(1614265330))


def test_standard_webhooks_reference_vector_is_stale_today() -> None:
    with pytest.raises(SignatureError) as exc:
        verify_standard([decode_whsec(SW_SECRET)], SW_BODY, SW_ID, SW_TS, SW_SIGNATURE)
    assert reason(exc) == "stale"


def test_standard_webhooks_several_signatures_and_rotation() -> None:
    clock = frozen(1614265330)
    key = decode_whsec(SW_SECRET)
    other = b"another key of the receiver"
    # the sender signs with two secrets; entries of other versions are ignored
    header = f"v1a,abcdef v1,{'A' * 44} {SW_SIGNATURE}"
    verify_standard([other, key], SW_BODY, SW_ID, SW_TS, header, now=clock)
    with pytest.raises(SignatureError) as exc:
        verify_standard([other], SW_BODY, SW_ID, SW_TS, header, now=clock)
    assert reason(exc) == "bad_signature"


@pytest.mark.parametrize(
    ("body", "msg_id", "ts", "header", "expected"),
    [
        (b'{"test": 2432232315}', SW_ID, SW_TS, SW_SIGNATURE, "bad_signature"),  # tampered
        (SW_BODY, "msg_other", SW_TS, SW_SIGNATURE, "bad_signature"),  # id is signed
        (SW_BODY, SW_ID, SW_TS, SW_SIGNATURE.replace("v1,", "v2,"), "bad_signature"),
        (SW_BODY, None, SW_TS, SW_SIGNATURE, "missing_header"),
        (SW_BODY, SW_ID, None, SW_SIGNATURE, "missing_header"),
        (SW_BODY, SW_ID, SW_TS, None, "missing_signature"),
        (SW_BODY, SW_ID, str(1614265330 + 301), SW_SIGNATURE, "future"),
        (SW_BODY, SW_ID, str(1614265330 - 301), SW_SIGNATURE, "stale"),
    ],
)
def test_standard_webhooks_refusals(
    body: bytes, msg_id: str | None, ts: str | None, header: str | None, expected: str
) -> None:
    with pytest.raises(SignatureError) as exc:
        verify_standard([decode_whsec(SW_SECRET)], body, msg_id, ts, header, now=frozen(1614265330))
    assert reason(exc) == expected


@pytest.mark.parametrize("bad", ["whsec_not base64!", "whsec_", "plain words"])
def test_whsec_must_be_base64(bad: str) -> None:
    with pytest.raises(ValueError, match=r"base64|empty"):
        decode_whsec(bad)


# -- mapping ----------------------------------------------------------------------------------
REPO = {"full_name": "octo/hello"}


@pytest.mark.parametrize(
    ("event", "payload", "type_", "subject"),
    [
        (
            "pull_request",
            {"action": "opened", "number": 7, "pull_request": {"number": 7}, "repository": REPO},
            "github.pull_request.opened.v1",
            "octo/hello#7",
        ),
        ("issues", {"action": "closed", "issue": {"number": 3}, "repository": REPO}, None, "octo/hello#3"),
        (
            "issue_comment",
            {"action": "created", "issue": {"number": 9}, "repository": REPO},
            None,
            "octo/hello#9",
        ),
        (
            "push",
            {"ref": "refs/heads/main", "repository": REPO},
            "github.push.v1",
            "octo/hello@refs/heads/main",
        ),
        ("release", {"action": "published", "repository": REPO}, "github.release.published.v1", "octo/hello"),
        ("organization", {"action": "member_added", "organization": {"login": "octo"}}, None, "octo"),
    ],
)
def test_github_mapping(event: str, payload: dict[str, object], type_: str | None, subject: str) -> None:
    routed = events.github_event(event, "delivery-1", payload)
    assert routed.topic == f"github.{event}.v1"
    assert routed.type == (type_ or f"github.{event}.{payload['action']}.v1")
    assert routed.id == "delivery-1"
    assert routed.subject == subject
    assert routed.data is payload


@pytest.mark.parametrize(
    ("event", "delivery", "payload"),
    [(None, "d", {}), ("push", None, {}), ("Push Event", "d", {}), ("push", "d", {"action": "x y"})],
)
def test_github_mapping_refusals(event: str | None, delivery: str | None, payload: dict[str, object]) -> None:
    with pytest.raises(PayloadError):
        events.github_event(event, delivery, payload)


def test_slack_event_mapping() -> None:
    payload = {
        "type": "event_callback",
        "team_id": "T1",
        "event_id": "Ev1",
        "event": {"type": "app_mention", "channel": "C1", "thread_ts": "1700.1", "text": "hi"},
    }
    routed = events.slack_event(payload)
    assert (routed.topic, routed.type, routed.id, routed.subject) == (
        "slack.events.v1",
        "slack.app_mention.v1",
        "Ev1",
        "C1:1700.1",
    )
    payload["event"] = {"type": "message", "channel": "C2"}
    assert events.slack_event(payload).subject == "C2"
    payload["event"] = {"type": "reaction_added", "item": {"channel": "C3"}}
    assert events.slack_event(payload).subject == "C3"
    payload["event"] = {"type": "team_join"}
    assert events.slack_event(payload).subject == "T1"


def test_slack_slash_command_mapping() -> None:
    routed = events.slack_form(events.parse_form(SLACK_BODY), SLACK_BODY)
    assert routed.type == "slack.slash_command.v1"
    assert routed.subject == "G8PSS9T3V"
    assert routed.id == "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    assert routed.data["command"] == "/webhook-collect"


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [("/fingerprint", "abc"), ("/labels/a~1b", "x"), ("/alerts/1/id", "7"), ("/m~0n", "tilde")],
)
def test_generic_subject_by_json_pointer(pointer: str, expected: str) -> None:
    payload = {"fingerprint": "abc", "labels": {"a/b": "x"}, "alerts": [{"id": 1}, {"id": 7}], "m~n": "tilde"}
    routed = events.generic_event("alerts", "msg_1", payload, pointer)
    assert routed.subject == expected
    assert (routed.topic, routed.type, routed.id) == (
        "webhooks.alerts.v1",
        "webhooks.alerts.received.v1",
        "msg_1",
    )


@pytest.mark.parametrize("pointer", ["/missing", "/alerts/5/id", "/alerts/01", "/labels"])
def test_generic_subject_pointer_refusals(pointer: str) -> None:
    payload = {"labels": {"a": 1}, "alerts": [{"id": 1}, {"id": 2}]}
    with pytest.raises(PayloadError):
        events.generic_event("alerts", "msg_1", payload, pointer)


def test_generic_subject_defaults_to_the_webhook_id() -> None:
    assert events.generic_event("alerts", "msg_1", {"a": 1}, None).subject == "msg_1"


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_json(body: bytes) -> None:
    with pytest.raises(PayloadError):
        events.parse_json(body)


# -- settings ---------------------------------------------------------------------------------
def test_settings_shapes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "slack"
    secret_file.write_text("new-secret, old-secret\n")
    monkeypatch.setenv("VIGIL_GITHUB_WEBHOOK_SECRET", "one,two")
    monkeypatch.setenv("VIGIL_SLACK_SIGNING_SECRET_FILE", str(secret_file))
    monkeypatch.setenv(
        "VIGIL_WEBHOOK_SOURCES", json.dumps({"alerts": {"secrets": [SW_SECRET], "subject": "/fingerprint"}})
    )
    config = GatewaySettings()
    assert config.github_secrets() == [b"one", b"two"]
    assert config.slack_secrets() == [b"new-secret", b"old-secret"]
    assert config.webhook_sources["alerts"].subject == "/fingerprint"
    assert config.webhook_sources["alerts"].keys() == [decode_whsec(SW_SECRET)]
    assert config.webhook_max_bytes == 1 << 20
    assert "one,two" not in repr(config) and SW_SECRET not in repr(config)


@pytest.mark.parametrize(
    "sources",
    [
        {"bad name": {"secrets": [SW_SECRET]}},
        {"alerts": {"secrets": ["whsec_***"]}},
        {"alerts": {"secrets": [SW_SECRET], "subject": "fingerprint"}},
        {"alerts": {"secrets": [SW_SECRET], "extra": 1}},
    ],
)
def test_settings_refuse_bad_sources(monkeypatch: pytest.MonkeyPatch, sources: dict[str, object]) -> None:
    monkeypatch.setenv("VIGIL_WEBHOOK_SOURCES", json.dumps(sources))
    with pytest.raises(ValidationError):
        GatewaySettings()


def test_settings_refuse_value_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_GITHUB_WEBHOOK_SECRET", "x")
    monkeypatch.setenv("VIGIL_GITHUB_WEBHOOK_SECRET_FILE", str(tmp_path / "x"))
    with pytest.raises(ValidationError, match="not both"):
        GatewaySettings()


def test_unconfigured_routes_have_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VIGIL_GITHUB_WEBHOOK_SECRET", "VIGIL_SLACK_SIGNING_SECRET", "VIGIL_WEBHOOK_SOURCES"):
        monkeypatch.delenv(name, raising=False)
    config = GatewaySettings(_env_file=None)
    assert config.github_secrets() == [] and config.slack_secrets() == []


@pytest.mark.parametrize(
    "data",
    [
        {"a": None, "nested": {"b": [1, 2.5, None, True]}, "é": "ünïcode ✨", "big": 10**20},
        {"text": 'quotes " and \\ backslashes\n and control \x01', "empty": {}},
    ],
)
def test_record_bytes_are_codecs(data: dict[str, object]) -> None:
    """The gateway serialises envelopes itself (faster); the bytes must be codec.encode's."""
    from schemas import RawEnvelope
    from streams.core import codec

    routed = events.Routed(
        "webhooks.x.v1", "webhooks.x.received.v1", "msg_1", "subj", "vigil/gateway/x", data
    )
    record = events.record(routed, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    envelope = codec.decode(record.value)
    assert envelope.data == data and envelope.subject == "subj"
    assert codec.encode(envelope) == record
    assert isinstance(RawEnvelope.model_validate_json(record.value), RawEnvelope)


def test_record_refuses_fields_the_envelope_cannot_hold() -> None:
    routed = events.Routed("webhooks.x.v1", "webhooks.x.received.v1", "m" * 300, "s", "vigil/gateway/x", {})
    with pytest.raises(PayloadError, match="id"):
        events.record(routed)


@pytest.mark.parametrize("body", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'])
def test_json_extensions_are_malformed(body: bytes) -> None:
    with pytest.raises(PayloadError):
        events.parse_json(body)


# -- command line -----------------------------------------------------------------------------
@pytest.mark.timeout(30)  # a configuration that is valid after all would serve forever
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VIGIL_GITHUB_WEBHOOK_SECRET_FILE": "/nonexistent/secret"}, "cannot read a secret file"),
        (
            {"VIGIL_WEBHOOK_SOURCES": '{"alerts": {"secrets": ["whsec_***"]}}'},
            "invalid setting webhook_sources",
        ),
        ({"VIGIL_WEBHOOK_SOURCES": "not json"}, "VIGIL_WEBHOOK_SOURCES is not valid JSON"),
    ],
)
def test_gateway_bad_configuration_is_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    from click.testing import CliRunner

    from streams.cli.commands import cli

    for name in ("VIGIL_GITHUB_WEBHOOK_SECRET", "VIGIL_WEBHOOK_SOURCES"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, ["gateway", "--port", "0"], env=env)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output

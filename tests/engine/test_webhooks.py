"""Webhook definitions and Standard Webhooks signatures, pure: signing, verification against one or
two keys, the 5-minute window, the replay guard, bodies and transform results."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from steplog.engine import DefinitionError, Event
from steplog.engine.webhooks import (
    ReplayGuard,
    Verified,
    WebhookDef,
    WebhookRegistry,
    WebhookRequestError,
    WebhookVerificationError,
    define_webhook,
    parse_body,
    secret_key,
    sign,
    signature_headers,
    verify,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
KEY = b"current-key-of-twenty-four-bytes"
OLD_KEY = b"previous-key-of-24-bytes"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
BODY = b'{"action": "opened", "number": 7}'
MSG_ID = "msg_2b8xQ"

# The test vector of the Standard Webhooks specification (and of Svix's libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def noop(body: Any, headers: Any, query: Any) -> None:
    return None


def signed(
    secret: str | bytes = SECRET, *, msg_id: str = MSG_ID, at: datetime = NOW, body: bytes = BODY
) -> dict[str, str]:
    return signature_headers(secret, msg_id, at, body)


def refusal(headers: dict[str, str], body: bytes = BODY, now: datetime = NOW, keys: tuple[bytes, ...] = (KEY,)) -> str:
    with pytest.raises(WebhookVerificationError) as caught:
        verify(keys, headers, body, now)
    return str(caught.value)


# -- signing -----------------------------------------------------------------------------------


def test_sign_reproduces_the_specifications_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP), "webhook-signature": VECTOR_SIGNATURE}
    at = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    assert verify((secret_key(VECTOR_SECRET),), headers, VECTOR_BODY, at) == Verified(VECTOR_ID, VECTOR_TIMESTAMP)


def test_sign_takes_text_or_bytes_and_seconds_or_datetimes() -> None:
    seconds = int(NOW.timestamp())
    assert sign(SECRET, MSG_ID, NOW, BODY) == sign(SECRET, MSG_ID, seconds, BODY.decode())
    assert signed() == {
        "webhook-id": MSG_ID, "webhook-timestamp": str(seconds), "webhook-signature": sign(SECRET, MSG_ID, NOW, BODY)
    }


def test_a_whsec_secret_is_base64_and_any_other_string_is_its_utf8_bytes() -> None:
    assert secret_key(SECRET) == KEY
    assert secret_key("plain secret ü") == "plain secret ü".encode()
    assert secret_key(KEY) == KEY
    assert verify((b"plain",), signed("plain"), BODY, NOW) == Verified(MSG_ID, int(NOW.timestamp()))


@pytest.mark.parametrize("secret", ["", "   ", "whsec_", b""])
def test_an_empty_secret_is_refused(secret: str | bytes) -> None:
    with pytest.raises(ValueError, match="is empty"):
        secret_key(secret)


# -- verification ------------------------------------------------------------------------------


def test_a_valid_signature_is_verified() -> None:
    assert verify((KEY,), signed(), BODY, NOW) == Verified(MSG_ID, int(NOW.timestamp()))
    assert Verified(MSG_ID, 1000).expires == 1300


def test_a_wrong_key_does_not_match() -> None:
    assert refusal(signed("whsec_" + base64.b64encode(b"another key").decode())) == "signature does not match"


def test_rotation_accepts_the_previous_key_and_refuses_an_unknown_one() -> None:
    keys = (KEY, OLD_KEY)
    assert verify(keys, signed(OLD_SECRET), BODY, NOW).msg_id == MSG_ID
    assert verify(keys, signed(SECRET), BODY, NOW).msg_id == MSG_ID
    assert refusal(signed("unknown"), keys=keys) == "signature does not match"
    assert refusal(signed(OLD_SECRET), keys=(KEY,)) == "signature does not match"


def test_one_valid_signature_among_several_is_enough() -> None:
    headers = signed()
    wrong = sign("other", MSG_ID, NOW, BODY)
    headers["webhook-signature"] = f"v1a,c2lnbmF0dXJl {wrong} v1,!!not-base64!! {headers['webhook-signature']}"
    assert verify((KEY,), headers, BODY, NOW).msg_id == MSG_ID


@pytest.mark.parametrize(("offset", "accepted"), [(-300, True), (-301, False), (300, True), (301, False), (0, True)])
def test_the_window_is_five_minutes_either_way(offset: int, accepted: bool) -> None:
    headers = signed(at=NOW + timedelta(seconds=offset))
    if accepted:
        assert verify((KEY,), headers, BODY, NOW).timestamp == int(NOW.timestamp()) + offset
    else:
        direction = "past" if offset < 0 else "future"
        assert refusal(headers) == f"stale request: webhook-timestamp is 301 s in the {direction}; the limit is 300 s"


def test_the_window_counts_whole_seconds_of_now() -> None:
    headers = signed(at=NOW - timedelta(seconds=300))
    assert verify((KEY,), headers, BODY, NOW + timedelta(milliseconds=999)).msg_id == MSG_ID
    assert "stale request" in refusal(headers, now=NOW + timedelta(seconds=1))


def test_a_stale_request_is_refused_even_when_signed_correctly() -> None:
    assert refusal(signed(), now=NOW + timedelta(hours=1)).startswith("stale request")


def test_a_tampered_body_id_or_timestamp_does_not_match() -> None:
    headers = signed()
    assert refusal(headers, body=BODY.replace(b"7", b"8")) == "signature does not match"
    assert refusal({**headers, "webhook-id": "msg_other"}) == "signature does not match"
    later = str(int(NOW.timestamp()) + 1)
    assert refusal({**headers, "webhook-timestamp": later}) == "signature does not match"


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_named(name: str) -> None:
    headers = signed()
    del headers[name]
    assert refusal(headers) == f"the request has no {name} header; it must be signed"
    assert refusal({**headers, name: "  "}) == f"the request has no {name} header; it must be signed"


def test_svix_header_names_are_accepted() -> None:
    headers = {name.replace("webhook-", "svix-"): value for name, value in signed().items()}
    assert verify((KEY,), headers, BODY, NOW).msg_id == MSG_ID


@pytest.mark.parametrize(
    "value", ["", "garbage", "v1", "v1,", "v2,AAAA", "v1,!!!!", "v1,c2hvcnQ=", "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="]
)
def test_a_signature_header_without_a_well_formed_v1_entry_is_refused(value: str) -> None:
    headers = {**signed(), "webhook-signature": value}
    message = refusal(headers)
    if value.strip():
        assert message.startswith("webhook-signature holds no v1 signature")


@pytest.mark.parametrize("value", ["abc", "+1767268800", "1_767_268_800", "1767268800.5", "-5", "١٧٦٧٢٦٨٨٠٠"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(value: str) -> None:
    assert refusal({**signed(), "webhook-timestamp": value}).endswith("is not a unix time in seconds")


@given(position=st.integers(min_value=0), replacement=st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_of_the_body_is_refused(position: int, replacement: int) -> None:
    index = position % len(BODY)
    if BODY[index] == replacement:
        replacement = (replacement + 1) % 256
    tampered = BODY[:index] + bytes([replacement]) + BODY[index + 1 :]
    with pytest.raises(WebhookVerificationError):
        verify((KEY,), signed(), tampered, NOW)


@given(
    field=st.sampled_from(["webhook-id", "webhook-timestamp"]),
    position=st.integers(min_value=0),
    replacement=st.characters(codec="utf-8"),
)
def test_any_single_character_change_of_the_id_or_timestamp_is_refused(
    field: str, position: int, replacement: str
) -> None:
    headers = signed()
    value = headers[field]
    index = position % len(value)
    if value[index] == replacement:
        return
    headers[field] = value[:index] + replacement + value[index + 1 :]
    with pytest.raises(WebhookVerificationError):
        verify((KEY,), headers, BODY, NOW)


@given(body=st.binary(max_size=512), msg_id=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s != ""))
def test_whatever_is_signed_verifies(body: bytes, msg_id: str) -> None:
    assert verify((OLD_KEY, KEY), signed(msg_id=msg_id, body=body), body, NOW).msg_id == msg_id


# -- the replay guard --------------------------------------------------------------------------


def test_a_claimed_id_is_refused_until_it_expires() -> None:
    guard = ReplayGuard()
    expires = int(NOW.timestamp()) + 300
    assert guard.claim("gh\nmsg_1", expires, NOW)
    assert not guard.claim("gh\nmsg_1", expires, NOW)
    assert not guard.claim("gh\nmsg_1", expires, NOW + timedelta(seconds=300))  # the signed request is still on time
    assert guard.claim("gh\nmsg_2", expires, NOW)
    assert guard.claim("gh\nmsg_1", expires + 301, NOW + timedelta(seconds=301))
    assert len(guard) == 1  # msg_2 expired too


def test_a_released_claim_may_be_claimed_again() -> None:
    guard = ReplayGuard()
    expires = int(NOW.timestamp()) + 300
    assert guard.claim("a", expires, NOW)
    guard.release("a")
    assert guard.claim("a", expires + 10, NOW)
    assert not guard.claim("a", expires + 10, NOW + timedelta(seconds=305))  # the stale heap entry removed nothing


def test_at_capacity_the_claim_closest_to_expiring_is_forgotten() -> None:
    guard = ReplayGuard(capacity=3)
    base = int(NOW.timestamp())
    for key, expires in (("late", base + 300), ("early", base + 10), ("middle", base + 100)):
        assert guard.claim(key, expires, NOW)
    assert guard.claim("new", base + 200, NOW)
    assert len(guard) == 3
    assert guard.claim("early", base + 10, NOW)  # forgotten, so accepted again
    assert not guard.claim("late", base + 300, NOW)


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 600), st.booleans()), max_size=60))
def test_the_guard_stays_bounded_and_never_forgets_a_live_claim_below_capacity(
    steps: list[tuple[str, int, bool]],
) -> None:
    guard = ReplayGuard(capacity=100)
    base = int(NOW.timestamp())
    live: dict[str, int] = {}
    for tick, (key, ttl, release) in enumerate(steps):
        now = NOW + timedelta(seconds=tick)
        live = {k: e for k, e in live.items() if e >= base + tick}
        assert guard.claim(key, base + tick + ttl, now) == (key not in live)
        live.setdefault(key, base + tick + ttl)
        if release:
            guard.release(key)
            live.pop(key)
    assert len(guard) <= 100


def test_the_guard_needs_a_positive_capacity() -> None:
    with pytest.raises(ValueError, match="capacity 0"):
        ReplayGuard(capacity=0)


# -- definitions -------------------------------------------------------------------------------


def test_a_definition_keeps_its_keys_out_of_its_repr_and_description() -> None:
    webhook = define_webhook(noop, name="github", secret=SECRET, previous_secret="older")
    assert webhook.keys == (KEY, b"older")
    assert webhook.signed
    assert "key" not in repr(webhook).lower() and SECRET not in repr(webhook)
    assert webhook.describe() == {
        "name": "github", "path": "/webhooks/github", "signed": True, "previous_key": True, "transform": "noop"
    }
    assert not define_webhook(noop, name="open").signed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "webhook name '' is invalid"),
        ({"name": "a/b"}, "webhook name 'a/b' is invalid"),
        ({"name": "-x"}, "webhook name '-x' is invalid"),
        ({"name": "x" * 129}, "is invalid"),
        ({"name": "gh", "secret": ""}, "webhook 'gh': secret is empty"),
        ({"name": "gh", "secret": "whsec_not base64!"}, "webhook 'gh': secret starts with 'whsec_' but the rest"),
        ({"name": "gh", "secret": 42}, "webhook 'gh': secret must be a string, got int"),
        ({"name": "gh", "secret": "s", "previous_secret": " "}, "webhook 'gh': previous_secret is empty"),
        ({"name": "gh", "previous_secret": "s"}, "webhook 'gh': previous_secret is given without secret"),
    ],
)
def test_bad_definitions_are_refused_naming_the_webhook(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=re.escape(message)):
        define_webhook(noop, **kwargs)


def test_a_transform_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match="webhook 'gh': the transform 'nope' is not callable"):
        define_webhook("nope", name="gh")  # type: ignore[arg-type]


def test_names_follow_the_rules_of_function_ids() -> None:
    assert define_webhook(noop, name="a" * 128).name == "a" * 128
    assert define_webhook(noop, name="Stripe_v2.live-1").name == "Stripe_v2.live-1"


def test_async_transforms_are_recognised() -> None:
    async def transform(body: Any, headers: Any, query: Any) -> None:
        return None

    assert define_webhook(transform, name="a").is_async
    assert not define_webhook(noop, name="s").is_async


def test_the_registry_refuses_a_second_webhook_with_the_same_name() -> None:
    registry = WebhookRegistry()
    registry.add(define_webhook(noop, name="gh"))
    with pytest.raises(DefinitionError, match="webhook 'gh' is already defined"):
        registry.add(define_webhook(noop, name="gh", secret="s"))
    assert [w.name for w in registry.all()] == ["gh"] and len(registry) == 1
    assert registry.get("gh") is not None and registry.get("other") is None


# -- transform results -------------------------------------------------------------------------

WEBHOOK = define_webhook(noop, name="gh", secret=SECRET)
VERIFIED = Verified("msg_1", 1_767_268_800)


def test_no_events_is_an_empty_list() -> None:
    assert WEBHOOK.events_from(None, VERIFIED) == []
    assert WEBHOOK.events_from([], VERIFIED) == []


def test_verified_events_without_an_id_get_one_from_the_message() -> None:
    events = WEBHOOK.events_from(
        [{"name": "gh/push"}, Event(name="gh/push"), {"name": "gh/x", "id": "mine"}, Event(name="gh/y", id="own")],
        VERIFIED,
    )
    assert events == [
        {"name": "gh/push", "id": "webhook-gh-msg_1-0"},
        Event(name="gh/push", id="webhook-gh-msg_1-1"),
        {"name": "gh/x", "id": "mine"},
        Event(name="gh/y", id="own"),
    ]


def test_a_single_event_becomes_a_list_and_unverified_events_keep_no_id() -> None:
    assert WEBHOOK.events_from({"name": "gh/push"}, VERIFIED) == [{"name": "gh/push", "id": "webhook-gh-msg_1-0"}]
    assert WEBHOOK.events_from(Event(name="gh/push"), None) == [Event(name="gh/push")]
    assert WEBHOOK.events_from(({"name": "a"},), None) == [{"name": "a"}]


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ("gh/push", "webhook 'gh' transform returned a str ('gh/push'); return a steplog.Event, a dict, a list"),
        (42, "webhook 'gh' transform returned an int (42)"),
        ([{"name": "a"}, "b"], "webhook 'gh' transform returned a list whose item 1 is a str ('b'); events are"),
        ({"name"}, "webhook 'gh' transform returned a set"),
    ],
)
def test_a_result_that_is_not_events_is_named(result: object, message: str) -> None:
    with pytest.raises(WebhookRequestError) as caught:
        WEBHOOK.events_from(result, VERIFIED)
    assert str(caught.value).startswith(message)


def test_a_failed_transform_is_described_without_a_traceback() -> None:
    error = WEBHOOK.failed(KeyError("ref"))
    assert str(error) == "webhook 'gh' transform failed: KeyError: 'ref'"


def test_long_results_are_shortened_in_messages() -> None:
    with pytest.raises(WebhookRequestError) as caught:
        WEBHOOK.events_from("x" * 1000, None)
    assert "..." in str(caught.value) and len(str(caught.value)) < 250


# -- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "content_type", "expected"),
    [
        (b'{"a": 1}', "application/json", {"a": 1}),
        (b'[1, 2]', "application/json; charset=utf-8", [1, 2]),
        (b'"text"', "application/json", "text"),
        (b'{"a": 1}', "application/cloudevents+json", {"a": 1}),
        (b'{"a": 1}', None, {"a": 1}),
        (b' [1]', "text/plain", [1]),
        (b"42", "text/plain", "42"),
        (b"{not json", None, "{not json"),
        (b"payload=%7B%7D", "application/x-www-form-urlencoded", "payload=%7B%7D"),
        (b"", None, ""),
        (b"\xff\xfe", "application/octet-stream", b"\xff\xfe"),
        ("héllo".encode(), None, "héllo"),
    ],
)
def test_bodies(raw: bytes, content_type: str | None, expected: object) -> None:
    assert parse_body("gh", raw, content_type) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "webhook 'gh': the body is not valid JSON: "),
        (b"", "webhook 'gh': the body is not valid JSON: "),
        (b"\xff{}", "webhook 'gh': the body is application/json but not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "webhook 'gh': the body's JSON is nested too deeply"),
    ],
)
def test_a_json_body_that_is_not_json_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(WebhookRequestError) as caught:
        parse_body("gh", raw, "application/json")
    assert str(caught.value).startswith(message)


def test_webhook_defs_are_frozen() -> None:
    webhook: WebhookDef = define_webhook(noop, name="gh")
    with pytest.raises(AttributeError):
        webhook.name = "other"  # type: ignore[misc]

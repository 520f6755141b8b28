"""Webhooks: named HTTP endpoints whose requests a user's transform turns into events.

A webhook with a secret verifies each request as the Standard Webhooks scheme does
(https://www.standardwebhooks.com, which Svix implements):

    webhook-id          the message id; the same for every delivery attempt of one message
    webhook-timestamp   unix seconds; refused when more than 5 minutes away from now
    webhook-signature   space-separated ``v1,<base64 HMAC-SHA256>`` entries

The signed content is ``f"{id}.{timestamp}.".encode() + body`` (the raw body bytes). A secret is
``whsec_<base64>`` (the key is the decoded bytes) or any other string (the key is its UTF-8
bytes). With ``previous_secret`` a signature made with either key is accepted, so a sender can
rotate keys without losing requests. The ``svix-`` header names are accepted as well.

Pure: time comes in as ``now``; nothing here starts a thread or reads a clock. The server holds
the ``ReplayGuard`` and calls this from its event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
from steplog.engine.errors import DefinitionError, EngineError
from steplog.engine.events import Event

Transform = Callable[[Any, Mapping[str, str], Mapping[str, str]], Any]
"""``transform(body, headers, query)`` -> an event, a list of events, or None."""

TOLERANCE_SECONDS = 5 * 60
SECRET_PREFIX = "whsec_"
HEADER_PREFIXES = ("webhook-", "svix-")
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
DEFAULT_REPLAY_CAPACITY = 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")  # ASCII digits only: int() would also take "+1", "1_0", " 1"
_SIGNATURE_BYTES = hashlib.sha256().digest_size
_REPR_LIMIT = 80


class WebhookVerificationError(EngineError):
    """A signed webhook's request is unsigned, stale, replayed or tampered (HTTP 401)."""


class WebhookRequestError(EngineError, ValueError):
    """A webhook's request cannot become events: a bad body, or a transform that failed or returned
    something that is not events (HTTP 400). The message names the webhook."""


@attrs.frozen
class Verified:
    """A request whose signature holds: its message id and timestamp (unix seconds)."""

    msg_id: str
    timestamp: int

    @property
    def expires(self) -> int:
        """The last second at which the same signed request would still be on time."""
        return self.timestamp + TOLERANCE_SECONDS


@attrs.frozen
class WebhookDef:
    """A webhook: its name, the transform, and the keys that may sign its requests (none: unsigned)."""

    name: str
    transform: Transform
    keys: tuple[bytes, ...] = attrs.field(default=(), repr=False)  # current key first, then the previous one
    is_async: bool = False

    @property
    def signed(self) -> bool:
        """Whether requests must carry a valid signature."""
        return bool(self.keys)

    def describe(self) -> dict[str, Any]:
        """The definition as JSON (never the keys), for the UI."""
        return {
            "name": self.name,
            "path": f"/webhooks/{self.name}",
            "signed": self.signed,
            "previous_key": len(self.keys) > 1,
            "transform": getattr(self.transform, "__qualname__", repr(self.transform)),
        }

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Verified | None:
        """The verified request, or None for an unsigned webhook; WebhookVerificationError if it fails."""
        if not self.signed:
            return None
        return verify(self.keys, headers, body, now)

    def failed(self, error: Exception) -> WebhookRequestError:
        """The error to answer for a transform that raised ``error`` (its type and message, no traceback)."""
        return WebhookRequestError(f"webhook {self.name!r} transform failed: {type(error).__name__}: {error}")

    def events_from(self, result: object, verified: Verified | None) -> list[Event | dict[str, Any]]:
        """The events a transform returned, as a list; WebhookRequestError if it returned anything else.

        Each event without its own ``id`` of a verified request gets ``webhook-<name>-<msg id>-<index>``,
        so that the engine's 24-hour deduplication drops a replay that got past the in-memory guard
        (after a restart, say).
        """
        if result is None:
            return []
        items = [result] if isinstance(result, (Event, Mapping)) else result
        if not isinstance(items, (list, tuple)):
            raise WebhookRequestError(
                f"webhook {self.name!r} transform returned {_describe(result)}; return a steplog.Event, a dict,"
                " a list of them, or None"
            )
        return [self._event(item, index, verified) for index, item in enumerate(items)]

    def _event(self, item: object, index: int, verified: Verified | None) -> Event | dict[str, Any]:
        if not isinstance(item, (Event, Mapping)):
            raise WebhookRequestError(
                f"webhook {self.name!r} transform returned a list whose item {index} is {_describe(item)};"
                " events are steplog.Event objects or dicts"
            )
        if verified is None:
            return item if isinstance(item, Event) else dict(item)
        dedup_id = f"webhook-{self.name}-{verified.msg_id}-{index}"
        if isinstance(item, Event):
            return item if item.id else attrs.evolve(item, id=dedup_id)
        return dict(item) if item.get("id") else {**item, "id": dedup_id}


def define_webhook(
    transform: Transform,
    *,
    name: str,
    secret: str | bytes | None = None,
    previous_secret: str | bytes | None = None,
) -> WebhookDef:
    """Build a WebhookDef, raising DefinitionError naming the webhook and the problem."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"webhook name {name!r} is invalid: use 1-128 letters, digits, '-', '_' or '.',"
            " starting with a letter or digit"
        )
    if not callable(transform):
        raise DefinitionError(f"webhook {name!r}: the transform {transform!r} is not callable")
    if previous_secret is not None and secret is None:
        raise DefinitionError(f"webhook {name!r}: previous_secret is given without secret")
    keys = tuple(_key(value, name, what) for what, value in (("secret", secret), ("previous_secret", previous_secret))
                 if value is not None)
    return WebhookDef(name=name, transform=transform, keys=keys, is_async=inspect.iscoroutinefunction(transform))


def _key(secret: object, name: str, what: str) -> bytes:
    try:
        return secret_key(secret)
    except (TypeError, ValueError) as error:
        raise DefinitionError(f"webhook {name!r}: {what} {error}") from None


def secret_key(secret: object) -> bytes:
    """The HMAC key of a secret: the decoded bytes of ``whsec_<base64>``, else the UTF-8 bytes of the
    string (or the bytes given). ValueError for an empty or undecodable secret, TypeError for a
    secret that is neither text nor bytes."""
    if isinstance(secret, str) and not secret.strip():
        raise ValueError("is empty")
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        key = _decode_whsec(secret) if secret.startswith(SECRET_PREFIX) else secret.encode("utf-8")
    else:
        raise TypeError(f"must be a string, got {type(secret).__name__}")
    if not key:
        raise ValueError("is empty")
    return key


def _decode_whsec(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(f"starts with {SECRET_PREFIX!r} but the rest is not base64") from None


def sign(secret: str | bytes, msg_id: str, timestamp: int | datetime, body: bytes | str) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for a message, as a Standard Webhooks sender makes it."""
    seconds = _seconds(timestamp)
    digest = _digest(secret_key(secret), msg_id, str(seconds), _bytes(body))
    return f"v1,{base64.b64encode(digest).decode('ascii')}"


def signature_headers(secret: str | bytes, msg_id: str, timestamp: int | datetime, body: bytes | str) -> dict[str, str]:
    """The three headers that sign a request: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(_seconds(timestamp)),
        SIGNATURE_HEADER: sign(secret, msg_id, timestamp, body),
    }


def verify(keys: tuple[bytes, ...], headers: Mapping[str, str], body: bytes, now: datetime) -> Verified:
    """Check a request signed with any of ``keys``; WebhookVerificationError says why it is refused.

    ``headers`` has lower-case names. Checked in order: the three headers are present, the
    timestamp is within 5 minutes of ``now`` (either way), and one ``v1`` signature matches.
    """
    msg_id, timestamp, signatures = (_header(headers, name) for name in ("id", "timestamp", "signature"))
    if not _TIMESTAMP.match(timestamp):
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} {_short(timestamp)} is not a unix time in seconds")
    seconds = int(timestamp)
    _check_fresh(seconds, math.floor(now.timestamp()))
    candidates = _v1_signatures(signatures)
    expected = [_digest(key, msg_id, timestamp, body) for key in keys]
    # every pair is compared, so the time taken says nothing about which key or entry matched
    matches = [hmac.compare_digest(given, wanted) for given in candidates for wanted in expected]
    if not any(matches):
        raise WebhookVerificationError("signature does not match")
    return Verified(msg_id=msg_id, timestamp=seconds)


def _header(headers: Mapping[str, str], name: str) -> str:
    for prefix in HEADER_PREFIXES:
        value = headers.get(prefix + name, "").strip()
        if value:
            return value
    raise WebhookVerificationError(f"the request has no {HEADER_PREFIXES[0]}{name} header; it must be signed")


def _check_fresh(timestamp: int, now: int) -> None:
    if timestamp < now - TOLERANCE_SECONDS:
        raise WebhookVerificationError(
            f"stale request: {TIMESTAMP_HEADER} is {now - timestamp} s in the past; the limit is {TOLERANCE_SECONDS} s"
        )
    if timestamp > now + TOLERANCE_SECONDS:
        raise WebhookVerificationError(
            f"stale request: {TIMESTAMP_HEADER} is {timestamp - now} s in the future;"
            f" the limit is {TOLERANCE_SECONDS} s"
        )


def _v1_signatures(header: str) -> list[bytes]:
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # other schemes (v1a: asymmetric) are not ours to check
        try:
            signature = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if len(signature) == _SIGNATURE_BYTES:
            found.append(signature)
    if not found:
        raise WebhookVerificationError(
            f"{SIGNATURE_HEADER} holds no v1 signature: expected space-separated 'v1,<base64 HMAC-SHA256>' entries"
        )
    return found


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def _seconds(timestamp: int | datetime) -> int:
    return math.floor(timestamp.timestamp()) if isinstance(timestamp, datetime) else int(timestamp)


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


class ReplayGuard:
    """The webhook messages accepted within the replay window, in memory.

    ``claim`` records a message until it expires (when the same signed request would be stale
    anyway); ``release`` forgets a claim whose request then failed, so that the sender's retry is
    accepted. At ``capacity`` the claim closest to expiring is forgotten first (the events' dedup
    ids still catch its replay). Not thread-safe: one event loop uses it.
    """

    def __init__(self, capacity: int = DEFAULT_REPLAY_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity {capacity} must be at least 1")
        self.capacity = capacity
        self._expires: dict[str, int] = {}
        self._by_expiry: list[tuple[int, str]] = []  # a heap; entries whose claim was released are skipped

    def __len__(self) -> int:
        return len(self._expires)

    def claim(self, key: str, expires: int, now: datetime) -> bool:
        """Record ``key`` until ``expires`` (unix seconds); False if it is already recorded."""
        self._forget_expired(math.floor(now.timestamp()))
        if key in self._expires:
            return False
        while len(self._expires) >= self.capacity:
            self._pop_earliest()
        self._expires[key] = expires
        heapq.heappush(self._by_expiry, (expires, key))
        if len(self._by_expiry) > 2 * self.capacity:
            self._by_expiry = [(expiry, key) for key, expiry in self._expires.items()]
            heapq.heapify(self._by_expiry)
        return True

    def release(self, key: str) -> None:
        """Forget a claim."""
        self._expires.pop(key, None)

    def _forget_expired(self, now: int) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            self._drop(*heapq.heappop(self._by_expiry))

    def _pop_earliest(self) -> None:
        while self._by_expiry:
            expiry, key = heapq.heappop(self._by_expiry)
            if self._expires.get(key) == expiry:
                del self._expires[key]
                return

    def _drop(self, expiry: int, key: str) -> None:
        if self._expires.get(key) == expiry:
            del self._expires[key]


def parse_body(webhook: str, raw: bytes, content_type: str | None) -> Any:
    """The body a transform receives.

    A JSON content type (``application/json``, ``application/*+json``) gives the parsed JSON, and
    a body that is not JSON is a WebhookRequestError. Otherwise a body that is a JSON object or
    array gives it parsed, and anything else the text (``str``), or ``bytes`` if it is not UTF-8.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    declared_json = media_type == "application/json" or (media_type.startswith("application/") and
                                                         media_type.endswith("+json"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if declared_json:
            raise WebhookRequestError(f"webhook {webhook!r}: the body is {media_type} but not UTF-8") from None
        return raw
    if declared_json:
        return _json(webhook, text)
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return text
    return text


def _json(webhook: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise WebhookRequestError(f"webhook {webhook!r}: the body is not valid JSON: {error}") from None
    except RecursionError:
        raise WebhookRequestError(f"webhook {webhook!r}: the body's JSON is nested too deeply") from None


def _describe(value: object) -> str:
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return f"{article} {kind} ({_short(value)})"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


class WebhookRegistry:
    """The webhooks a client knows, by name."""

    def __init__(self) -> None:
        self._webhooks: dict[str, WebhookDef] = {}

    def add(self, webhook: WebhookDef) -> None:
        """Register a webhook; a second one with the same name is refused."""
        if webhook.name in self._webhooks:
            raise DefinitionError(f"webhook {webhook.name!r} is already defined")
        self._webhooks[webhook.name] = webhook

    def __len__(self) -> int:
        return len(self._webhooks)

    def get(self, name: str) -> WebhookDef | None:
        return self._webhooks.get(name)

    def all(self) -> list[WebhookDef]:
        return list(self._webhooks.values())

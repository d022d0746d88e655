"""Virtual keys: minting, salted hashes, constant-time checks, a short in-process cache.

A key reads ``sk-sy-<16 hex id>_<secret>``. The store keeps the id, a random salt and
HMAC-SHA256(salt, secret), never the secret. Checking a key is one HMAC (about a
microsecond) and, on a cache miss, one store read; verified records are cached for
``cache_ttl_s`` so the request path stays cheap. A revoked key stops working on the replica
that revoked it at once, on the others within ``cache_ttl_s``.

No key ever appears in a log line, a metric label or an error body: messages name the key
id at most.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, StateStoreFailed, SwitchyardError, why
from gateway.interfaces import Constraints
from gateway.state import KeyRecord, StateStore, StateUnavailable, Team

log = logging.getLogger("switchyard.auth")

KEY_PREFIX = "sk-sy-"
_ID_LEN = 16


def digest(salt_hex: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt_hex), secret.encode(), hashlib.sha256).hexdigest()


def mint_key(team: str, name: str, *, expires_at: float | None = None, rpm: int | None = None,
             tpm: int | None = None, now: float | None = None) -> tuple[str, KeyRecord]:
    """A new key: the plaintext (shown once) and the record to store."""
    key_id = secrets.token_hex(_ID_LEN // 2)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    rec = KeyRecord(key_id=key_id, team=team, name=name, salt=salt, digest=digest(salt, secret),
                    created_at=time.time() if now is None else now, expires_at=expires_at,
                    rpm=rpm, tpm=tpm)
    return f"{KEY_PREFIX}{key_id}_{secret}", rec


def parse_key(key: str) -> tuple[str, str] | None:
    """(key id, secret), or None when it is not a Switchyard key."""
    if not key.startswith(KEY_PREFIX):
        return None
    rest = key[len(KEY_PREFIX):]
    key_id, sep, secret = rest.partition("_")
    if not sep or len(key_id) != _ID_LEN or not secret:
        return None
    return key_id, secret


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


@dataclass(frozen=True, slots=True)
class Identity:
    team: Team
    key: KeyRecord

    @property
    def constraints(self) -> Constraints:
        t = self.team
        return Constraints(
            allowed_backends=frozenset(t.backends) if t.backends else None,
            allowed_models=frozenset(t.models) if t.models else None,
        )


_NO_KEYS = "API keys cannot be checked; try again shortly"


class KeyAuthenticator:
    """Checks a bearer key against the store, with a short cache of verified records.

    ``required()`` tells whether keys are needed at all: only once a team exists (with no
    team configured the gateway stays open for local use)."""

    def __init__(self, store: StateStore, *, cache_ttl_s: float = 2.0, fail_open: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = cache_ttl_s
        self.fail_open = fail_open  # on an outage, trust records seen before (stale cache)
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord, Team]] = {}
        self._required: tuple[float, bool] | None = None

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached records (after an admin change on this replica)."""
        if key_id is None:
            self._cache.clear()
            self._required = None
        else:
            self._cache.pop(key_id, None)

    @staticmethod
    def _failed(e: Exception) -> StateStoreFailed:
        log.error("the state store failed while checking an API key (%s); answered 503",
                  why(e))
        return StateStoreFailed("API keys")

    async def required(self) -> bool:
        now = self._clock()
        if self._required is not None and self._required[0] > now:
            return self._required[1]
        try:
            value = await self.store.has_teams()
        except StateUnavailable as e:
            if self.fail_open and self._required is not None:
                return self._required[1]
            raise e.because(_NO_KEYS) from None
        except SwitchyardError:
            raise
        except Exception as e:  # noqa: BLE001 - the store answered with an error: a 503
            raise self._failed(e) from None
        if len(self._cache) > 10_000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._required = (now + self.ttl, value)
        return value

    async def _records(self, key_id: str) -> tuple[KeyRecord, Team] | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        try:
            rec = await self.store.get_key(key_id)
            team = await self.store.get_team(rec.team) if rec is not None else None
        except StateUnavailable as e:
            if self.fail_open and hit is not None:
                return hit[1], hit[2]
            raise e.because(_NO_KEYS) from None
        except SwitchyardError:
            raise
        except Exception as e:  # noqa: BLE001 - any error the store answers is a 503
            raise self._failed(e) from None
        if rec is None or team is None:
            self._cache.pop(key_id, None)
            return None
        self._cache[key_id] = (now + self.ttl, rec, team)
        return rec, team

    async def verify(self, authorization: str | None) -> Identity | None:
        """The caller's identity; None when keys are not required and none was sent.
        Raises AuthenticationFailed (401) for a missing, unknown, revoked or expired key."""
        token = bearer(authorization)
        if not await self.required():
            return None
        if token is None:
            raise AuthenticationFailed(
                "This gateway requires an API key: send 'Authorization: Bearer sk-sy-...'.")
        parsed = parse_key(token)
        found = await self._records(parsed[0]) if parsed else None
        if parsed is None or found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        rec, team = found
        if not hmac.compare_digest(digest(rec.salt, parsed[1]), rec.digest):
            raise AuthenticationFailed("Incorrect API key provided.")
        if rec.revoked_at is not None:
            raise AuthenticationFailed(f"The API key {rec.key_id} has been revoked.")
        if rec.expires_at is not None and rec.expires_at <= time.time():
            raise AuthenticationFailed(f"The API key {rec.key_id} has expired.")
        return Identity(team, rec)

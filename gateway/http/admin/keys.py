"""``/admin/keys``: mint, list, read, revoke and rotate virtual keys. The plaintext key is
shown once, when it is minted; the store keeps its hash."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from gateway.assembly import Budgets
from gateway.auth import mint_key
from gateway.config import Settings
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.http.admin.common import Body, Handler, log, parse, team_or_404
from gateway.http.routes import json_response
from gateway.state import KeyRecord


class KeyIn(Body):
    team: str
    name: str = Field(min_length=1, max_length=128)
    expires_at: datetime | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


async def create_key(request: Request, b: Budgets, s: Settings) -> Response:
    body = await parse(KeyIn, request)
    return await _mint(b, body.team, body.name, _expiry(body.expires_at), body.rpm, body.tpm)


def _expiry(value: datetime | None) -> float | None:
    if value is None:
        return None
    ts = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if ts <= time.time():
        raise InvalidRequest("expires_at is in the past.", param="expires_at")
    return ts


async def _mint(b: Budgets, team: str, name: str, expires_at: float | None, rpm: int | None,
                tpm: int | None, replaces: str | None = None) -> Response:
    if await b.store.get_team(team) is None:
        raise NotFound(f"There is no team '{team}'.", param="team", code="team_not_found")
    live = [k for k in await b.store.list_keys(team) if k.revoked_at is None and k.key_id != replaces]
    if any(k.name == name for k in live):
        raise Conflict(f"Team '{team}' has a key named '{name}'.", param="name", code="key_exists")
    plaintext, rec = mint_key(team, name, expires_at=expires_at, rpm=rpm, tpm=tpm)
    await b.store.put_key(rec)
    b.auth.forget()
    log.info("key %s created for team %s", rec.key_id, team)
    return json_response({"key": plaintext, **rec.public()}, 201)


async def _key_or_404(b: Budgets, key_id: str) -> KeyRecord:
    rec = await b.store.get_key(key_id)
    if rec is None:
        raise NotFound(f"There is no key '{key_id}'.", code="key_not_found")
    return rec


async def list_keys(request: Request, b: Budgets, s: Settings) -> Response:
    team = request.query_params.get("team")
    if team is not None:
        await team_or_404(b, team)
    keys = await b.store.list_keys(team)
    return json_response({"object": "list", "data": [k.public() for k in keys]})


async def get_key(request: Request, b: Budgets, s: Settings) -> Response:
    return json_response((await _key_or_404(b, request.path_params["key_id"])).public())


async def revoke_key(request: Request, b: Budgets, s: Settings) -> Response:
    rec = await _key_or_404(b, request.path_params["key_id"])
    if rec.revoked_at is None:
        rec.revoked_at = time.time()
        await b.store.put_key(rec)
        log.info("key %s of team %s revoked", rec.key_id, rec.team)
    b.auth.forget(rec.key_id)
    return json_response(rec.public())


async def rotate_key(request: Request, b: Budgets, s: Settings) -> Response:
    """A new key with the old one's team, name, expiry and limits; the old one is revoked."""
    old = await _key_or_404(b, request.path_params["key_id"])
    if old.revoked_at is not None:
        raise InvalidRequest(f"The key '{old.key_id}' is revoked; create a new one instead.")
    resp = await _mint(b, old.team, old.name, old.expires_at, old.rpm, old.tpm,
                       replaces=old.key_id)
    old.revoked_at = time.time()
    await b.store.put_key(old)
    b.auth.forget(old.key_id)
    return resp


HANDLERS: list[tuple[str, str, Handler]] = [
    ("/admin/keys", "POST", create_key),
    ("/admin/keys", "GET", list_keys),
    ("/admin/keys/{key_id}", "GET", get_key),
    ("/admin/keys/{key_id}", "DELETE", revoke_key),
    ("/admin/keys/{key_id}/rotate", "POST", rotate_key),
]

"""``/dashboard``: the savings report live (docs/report.md), the charts of
``switchyard report --html`` redrawn every ``REFRESH_S`` seconds.

A login form (``POST /dashboard/login``, the key in the body, never in a URL) takes the
admin key (every team) or a team's own API key (that team only); it sets an HttpOnly,
SameSite=Strict cookie scoped to ``/dashboard`` that holds no key: the scope, the key's id,
an expiry and an HMAC over them keyed by a hash of the admin key (so sessions survive a
restart, are shared by replicas, and all end when the admin key changes). A team session is
checked against the key store on every view: a revoked or expired key ends it. Without an
admin key (the admin API is off) the dashboard is off too.

- ``GET /dashboard``: the page (or the login form); ``since``, ``until``, ``route``,
  ``group_by`` and, for the admin, ``team`` narrow it (default: the last 7 days);
- ``GET /dashboard/body``: the page's body alone, what the page's script swaps in;
- ``POST /dashboard/logout``: ends the session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import time
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.assembly import Budgets
from gateway.auth import KEY_PREFIX
from gateway.config import Settings
from gateway.errors import AuthenticationFailed, PermissionDenied, SwitchyardError
from gateway.http.routes import error_response, read_body
from gateway.report import build, check_group, window_of
from gateway.report_html import body, page

COOKIE = "switchyard_dashboard"
SESSION_S = 8 * 3600
REFRESH_S = 15
DEFAULT_DAYS = 7
_ALL = "*"  # the admin's scope: every team

_SCRIPT = f"""<script>
(function () {{
  var busy = false;
  setInterval(function () {{
    if (busy) return; busy = true;
    fetch("/dashboard/body" + location.search, {{credentials: "same-origin"}})
      .then(function (r) {{
        if (r.status === 401) {{ location.reload(); return null; }}
        return r.ok ? r.text() : null;
      }})
      .then(function (html) {{
        if (html) document.getElementById("report").innerHTML = html;
      }})
      .catch(function () {{}})
      .finally(function () {{ busy = false; }});
  }}, {REFRESH_S * 1000});
}})();
</script>"""

_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Switchyard
dashboard</title><link rel="icon" href="data:,"><style>body{{font:15px system-ui,sans-serif;background:#f8fafc;display:flex;
justify-content:center;padding-top:12vh}}form{{background:#fff;border:1px solid #e2e8f0;
border-radius:8px;padding:20px 24px;width:340px}}input{{width:100%;box-sizing:border-box;
padding:6px;margin:8px 0 12px}}.err{{color:#b91c1c}}</style></head><body>
<form method="post" action="/dashboard/login"><h2>Switchyard dashboard</h2>{msg}
<label for="key">The admin key, or your team's API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{next}"><button type="submit">Sign in</button>
</form></body></html>"""


def _secret(settings: Settings) -> bytes:
    admin = settings.admin_key
    if admin is None:
        raise PermissionDenied("The dashboard is off: set SWITCHYARD_ADMIN_KEY or admin_key.",
                               code="admin_disabled")
    return hashlib.sha256(b"switchyard-dashboard\0" + admin.get_secret_value().encode()).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def sign(settings: Settings, scope: str, key_id: str, expires: int) -> str:
    payload = _b64(f"{scope}\n{key_id}\n{expires}".encode())
    mac = hmac.new(_secret(settings), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def _unsign(settings: Settings, token: str) -> tuple[str, str] | None:
    """(scope, key id) of a valid, unexpired session token."""
    payload, _, mac = token.partition(".")
    want = _b64(hmac.new(_secret(settings), payload.encode(), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(mac, want):
        return None
    try:
        scope, key_id, expires = base64.urlsafe_b64decode(
            payload + "=" * (-len(payload) % 4)).decode().split("\n")
        if int(expires) < time.time():
            return None
    except ValueError:
        return None
    return scope, key_id


async def _session(request: Request) -> str | None:
    """The session's scope (``_ALL`` or a team), None when there is none."""
    settings: Settings = request.app.state.settings
    found = _unsign(settings, request.cookies.get(COOKIE, ""))
    if found is None:
        return None
    scope, key_id = found
    if scope == _ALL:
        return scope
    b: Budgets = request.app.state.budgets
    rec = await b.store.get_key(key_id)
    if rec is None or rec.team != scope or rec.revoked_at is not None or (
            rec.expires_at is not None and rec.expires_at <= time.time()):
        return None
    return scope


async def _login_scope(request: Request, key: str) -> tuple[str, str]:
    """(scope, key id) for a key typed into the form; 401 when it is not a valid one."""
    settings: Settings = request.app.state.settings
    _secret(settings)  # 403 when there is no admin key
    admin = settings.admin_key
    assert admin is not None
    if hmac.compare_digest(key.encode(), admin.get_secret_value().encode()):
        return _ALL, "admin"
    if key.startswith(KEY_PREFIX):
        b: Budgets = request.app.state.budgets
        ident = await b.auth.verify(f"Bearer {key}")
        if ident is not None:
            return ident.team.name, ident.key.key_id
    raise AuthenticationFailed("That is neither the admin key nor a valid team API key.")


def _login_page(message: str = "", next_q: str = "", status: int = 200) -> HTMLResponse:
    msg = f'<p class="err">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(_LOGIN.format(msg=msg, next=html.escape(next_q, quote=True)),
                        status_code=status,
                        headers={"cache-control": "no-store"})


async def _report(request: Request, scope: str) -> dict[str, Any]:
    q = request.query_params
    window = window_of(q)
    if window.since is None and window.until is None:
        window = replace(window, since=time.time() - DEFAULT_DAYS * 86400)
    if scope != _ALL:
        window = replace(window, team=scope)  # a team's key sees its own team only
    ledger = request.app.state.ledger
    if ledger is None:
        raise PermissionDenied("The ledger is disabled (ledger.kind: none): nothing to show.",
                               code="ledger_disabled")
    return await asyncio.to_thread(build, ledger, window, check_group(q.get("group_by")))


def _guard(fn: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)  # type: ignore[no-any-return]
        except SwitchyardError as e:
            return error_response(e)
    return endpoint


async def dashboard(request: Request) -> Response:
    scope = await _session(request)
    if scope is None:
        return _login_page(next_q=request.url.query)
    title = "Switchyard dashboard" + ("" if scope == _ALL else f": team {scope}")
    text = page(await _report(request, scope), title=title, script=_SCRIPT + (
        '<form method="post" action="/dashboard/logout" style="position:absolute;top:12px;'
        'right:20px"><button type="submit">Sign out</button></form>'))
    return HTMLResponse(text, headers={"cache-control": "no-store"})


async def dashboard_body(request: Request) -> Response:
    scope = await _session(request)
    if scope is None:
        raise AuthenticationFailed("Sign in at /dashboard.")
    return HTMLResponse(body(await _report(request, scope)),
                        headers={"cache-control": "no-store"})


async def login(request: Request) -> Response:
    form = parse_qs((await read_body(request, 8192)).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    next_q = (form.get("next") or [""])[0]
    try:
        scope, key_id = await _login_scope(request, key)
    except AuthenticationFailed as e:
        return _login_page(e.message, next_q, status=401)
    expires = int(time.time()) + SESSION_S
    # only the dashboard's own query parameters survive into the redirect
    kept = {k: v[0] for k, v in parse_qs(next_q).items()
            if k in ("since", "until", "team", "route", "group_by")}
    resp = RedirectResponse("/dashboard" + (f"?{urlencode(kept)}" if kept else ""), 303)
    resp.set_cookie(COOKIE, sign(request.app.state.settings, scope, key_id, expires),
                    max_age=SESSION_S, path="/dashboard", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")
    return resp


async def logout(request: Request) -> Response:
    resp = RedirectResponse("/dashboard", 303)
    resp.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
    return resp


def dashboard_routes() -> list[Route]:
    return [Route("/dashboard", _guard(dashboard), methods=["GET"]),
            Route("/dashboard/body", _guard(dashboard_body), methods=["GET"]),
            Route("/dashboard/login", _guard(login), methods=["POST"]),
            Route("/dashboard/logout", _guard(logout), methods=["POST"])]

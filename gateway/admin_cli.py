"""``switchyard teams ...``, ``switchyard keys ...``, ``switchyard spend``, ``switchyard
backends list|drain|undrain``: the admin API from
the shell. Talks to a running gateway (``--url``, default ``$SWITCHYARD_URL`` or
http://127.0.0.1:8080) with the admin key (``--admin-key`` or ``$SWITCHYARD_ADMIN_KEY``).
Prints the API's JSON; exits 1 with the API's error message on failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote

import httpx


def _client(args: argparse.Namespace) -> httpx.Client:
    key = args.admin_key or os.environ.get("SWITCHYARD_ADMIN_KEY")
    if not key:
        raise SystemExit("switchyard: the admin key is needed: --admin-key or SWITCHYARD_ADMIN_KEY")
    return httpx.Client(base_url=args.url.rstrip("/"), timeout=30,
                        headers={"authorization": f"Bearer {key}"})


def _call(args: argparse.Namespace, method: str, path: str, **kw: Any) -> int:
    try:
        with _client(args) as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as e:
        print(f"switchyard: cannot reach {args.url}: {type(e).__name__}", file=sys.stderr)
        return 1
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"message": r.text}}
    if r.status_code >= 400:
        msg = (body.get("error") or {}).get("message") if isinstance(body, dict) else r.text
        print(f"switchyard: {r.status_code}: {msg}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _team_fields(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("budget_usd", "period", "soft_limit_pct", "rpm", "tpm"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    for name in ("models", "backends"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = [v for v in value.split(",") if v]
    if getattr(args, "no_budget", False):
        out["budget_usd"] = None
    return out


def cmd_teams(args: argparse.Namespace) -> int:
    a = args.action
    if a == "create":
        return _call(args, "POST", "/admin/teams", json={"name": args.name, **_team_fields(args)})
    if a == "update":
        return _call(args, "PATCH", f"/admin/teams/{args.name}", json=_team_fields(args))
    if a == "list":
        return _call(args, "GET", "/admin/teams")
    if a == "show":
        return _call(args, "GET", f"/admin/teams/{args.name}")
    if a == "spend":
        return _call(args, "GET", f"/admin/teams/{args.name}/spend")
    return _call(args, "DELETE", f"/admin/teams/{args.name}")


def cmd_keys(args: argparse.Namespace) -> int:
    a = args.action
    if a == "create":
        body: dict[str, Any] = {"team": args.team, "name": args.name}
        for name in ("expires_at", "rpm", "tpm"):
            if getattr(args, name) is not None:
                body[name] = getattr(args, name)
        return _call(args, "POST", "/admin/keys", json=body)
    if a == "list":
        return _call(args, "GET", "/admin/keys", params={"team": args.team} if args.team else {})
    if a == "revoke":
        return _call(args, "DELETE", f"/admin/keys/{args.key_id}")
    return _call(args, "POST", f"/admin/keys/{args.key_id}/rotate")


def cmd_spend(args: argparse.Namespace) -> int:
    params = {"group_by": args.group_by}
    for name in ("team", "since", "until"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    return _call(args, "GET", "/admin/spend", params=params)


def cmd_backends(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _call(args, "GET", "/admin/backends")
    path = f"/admin/backends/{quote(args.name, safe='/:@')}/{args.action}"
    if args.action == "undrain":
        return _call(args, "POST", path)
    body: dict[str, Any] = {"reason": args.reason or ""}
    if args.by:
        body["by"] = args.by
    return _call(args, "POST", path, json=body)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8080"))
    p.add_argument("--admin-key", help="default: $SWITCHYARD_ADMIN_KEY")


def _team_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", dest="budget_usd", type=float, help="US dollars per period")
    p.add_argument("--no-budget", action="store_true", help="remove the budget (update)")
    p.add_argument("--period", choices=["day", "week", "month", "total"])
    p.add_argument("--soft-limit-pct", type=float, help="alert at this share of the budget")
    p.add_argument("--rpm", type=int, help="requests per minute for the whole team")
    p.add_argument("--tpm", type=int, help="tokens per minute for the whole team")
    p.add_argument("--models", help="comma-separated models the team may use")
    p.add_argument("--backends", help="comma-separated backends the team may use")


def add_admin_commands(sub: Any) -> None:
    """Add ``teams``, ``keys``, ``spend`` and ``backends`` to the ``switchyard`` parser."""
    teams = sub.add_parser("teams", help="manage teams (budgets, limits) on a running gateway")
    tsub = teams.add_subparsers(dest="action", required=True)
    for action, help_ in (("create", "create a team"), ("update", "change a team"),
                          ("list", "list teams"), ("show", "show a team"),
                          ("spend", "spend this period"), ("delete", "delete a team and its keys")):
        p = tsub.add_parser(action, help=help_)
        if action != "list":
            p.add_argument("name")
        if action in ("create", "update"):
            _team_options(p)
        _common(p)
    teams.set_defaults(fn=cmd_teams)

    keys = sub.add_parser("keys", help="manage virtual keys on a running gateway")
    ksub = keys.add_subparsers(dest="action", required=True)
    p = ksub.add_parser("create", help="create a key (printed once)")
    p.add_argument("--team", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--expires-at", help="ISO 8601 time or Unix seconds")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    _common(p)
    p = ksub.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--team")
    _common(p)
    for action, help_ in (("revoke", "revoke a key"), ("rotate", "replace a key with a new one")):
        p = ksub.add_parser(action, help=help_)
        p.add_argument("key_id")
        _common(p)
    keys.set_defaults(fn=cmd_keys)

    p = sub.add_parser("spend", help="spend from the ledger, grouped")
    p.add_argument("--group-by", default="team", help="team,model,backend,key,route,day")
    p.add_argument("--team")
    p.add_argument("--since", help="ISO date or Unix time")
    p.add_argument("--until")
    _common(p)
    p.set_defaults(fn=cmd_spend)

    backends = sub.add_parser("backends", help="see backend health; drain and undrain backends")
    bsub = backends.add_subparsers(dest="action", required=True)
    _common(bsub.add_parser("list", help="every backend: breaker, health checks, drains"))
    p = bsub.add_parser("drain", help="take a backend out of service on every replica")
    p.add_argument("name")
    p.add_argument("--reason", help="shown in /admin/backends and in 503s")
    p.add_argument("--by", help="who drains (default: the replica that takes it)")
    _common(p)
    p = bsub.add_parser("undrain", help="put a drained backend back into service")
    p.add_argument("name")
    _common(p)
    backends.set_defaults(fn=cmd_backends)

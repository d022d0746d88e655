"""``switchyard``: serve, check-config, import-litellm (and, with budgets, teams and keys),
and the commands plugins register (``switchyard eval cache``, ...)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from gateway.config import Settings, check_settings, load_settings, workers_errors
from gateway.errors import ConfigError
from gateway.registry import BUILTIN_COMMANDS, Command


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as e:
        print(f"switchyard: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    settings = _load(args.config)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    if errors := workers_errors(settings):
        print(f"switchyard: {ConfigError(errors)}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    from gateway.http.app import create_app
    from gateway.http.server import serve, server_for

    def make_app() -> Any:
        context = None
        if settings.server.workers > 1:  # the in-process model: cores // N threads each
            from gateway.backend import BackendContext

            cores = len(os.sched_getaffinity(0))
            context = BackendContext(threads=max(1, cores // settings.server.workers))
        try:
            return create_app(settings, freeze_gc=True, context=context)
        except ConfigError as e:
            print(f"switchyard: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    if settings.server.workers > 1:
        from gateway.http.workers import serve_workers

        return serve_workers(settings, lambda: server_for(make_app(), settings,
                                                          access_log=args.access_log))
    try:
        app = make_app()
    except SystemExit as e:
        return int(e.code or 0)
    started = serve(app, settings, access_log=args.access_log)
    return 0 if started else 3  # uvicorn's exit status for a failed start


def cmd_check_config(args: argparse.Namespace) -> int:
    """Exactly the start-up validation, without starting anything; every error at once.

    Exit status 0 with a summary when the file is good, 2 with one line per error (its path
    and what is wrong) when it is not. Secrets are never printed."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from gateway.assembly import build_registry_for, validate

    try:
        settings, errors = check_settings(args.config)
    except ConfigError as e:  # unreadable, or not YAML: nothing more to check
        print(f"switchyard: {args.config}: {e}", file=sys.stderr)
        return 2
    try:  # what create_app builds before it starts anything: backends, every policy
        validate(settings, build_registry_for(settings))
    except ConfigError as e:
        errors.extend(err for err in e.errors if err not in errors)
    if errors:
        print(f"switchyard: {args.config}: {ConfigError(errors)}", file=sys.stderr)
        return 2
    backends = ", ".join(f"{b.name} ({b.plugin})" for b in settings.backends) or "none"
    routes = "; ".join(f"{r.name} -> {', '.join(r.backends)} "
                       + (f"[cascade: {' > '.join(r.cascade.stages)}, judge {r.cascade.judge}]"
                          if r.cascade else f"[{r.policy}]")
                       for r in settings.routes) or "none"
    print(f"{args.config}: OK\n  {len(settings.backends)} backends: {backends}\n"
          f"  {len(settings.routes)} routes: {routes}")
    return 0


def cmd_import_litellm(args: argparse.Namespace) -> int:
    """A LiteLLM proxy config as a Switchyard config (stdout, or ``-o FILE``); every key not
    carried over, and every secret turned into a variable, one line each on stderr."""
    from gateway.litellm_import import Unreadable, import_litellm, read_litellm, render

    try:
        data = read_litellm(args.litellm_config)
    except Unreadable as e:
        print(f"switchyard: {args.litellm_config}: {e}", file=sys.stderr)
        return 2
    out = import_litellm(data)
    text = render(out, os.path.basename(args.litellm_config))
    for line in out.report:
        print(f"switchyard: {line}", file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"switchyard: wrote {args.output}: {len(out.config['backends'])} backends, "
              f"{len(out.config['routes'])} routes", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _plugin_commands() -> list[Command]:
    """The commands plugins register (``switchyard_register_commands``), from every
    installed plugin; a broken plugin stops the CLI with its error, as at start-up."""
    from gateway.registry import build_registry

    try:
        reg = build_registry(commands=True)
    except ConfigError as e:
        print(f"switchyard: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return [entry.value for _, entry in sorted(reg.commands.items())]


def _add_plugin_commands(sub: Any, commands: list[Command]) -> None:
    """``eval cache`` and ``eval router`` become ``eval`` with two subcommands."""
    groups: dict[tuple[str, ...], Any] = {(): sub}
    for cmd in commands:
        *path, leaf = cmd.name.split(" ")
        for i in range(len(path)):
            key = tuple(path[: i + 1])
            if key not in groups:
                g = groups[key[:-1]].add_parser(key[-1], help=f"{' '.join(key)} commands")
                groups[key] = g.add_subparsers(dest=f"command_{i + 1}", required=True)
        parser = groups[tuple(path)].add_parser(leaf, help=cmd.help, description=cmd.help)
        cmd.configure(parser)
        parser.set_defaults(fn=cmd.run)


def build_parser(commands: list[Command] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; ``commands``: the plugins' commands to add (``_plugin_commands``)."""
    p = argparse.ArgumentParser(prog="switchyard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the gateway")
    s.add_argument("--config", "-c", help="YAML config file (default: the embedded default)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--access-log", action="store_true")
    s.add_argument("--workers", type=int, metavar="N",
                   help="worker processes on the one port (server.workers; docs/scaling.md)")
    s.set_defaults(fn=cmd_serve)
    c = sub.add_parser("check-config", help="validate a config file and report every error")
    c.add_argument("config")
    c.set_defaults(fn=cmd_check_config)
    m = sub.add_parser("import-litellm", help="write a Switchyard config from a LiteLLM proxy "
                       "config.yaml (docs/migrating-from-litellm.md)")
    m.add_argument("litellm_config", help="LiteLLM proxy config.yaml")
    m.add_argument("-o", "--output", help="write here (default: stdout)")
    m.set_defaults(fn=cmd_import_litellm)
    from gateway.admin_cli import add_admin_commands

    add_admin_commands(sub)
    from gateway.report_cli import add_report_command

    add_report_command(sub)
    if commands:
        _add_plugin_commands(sub, commands)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The plugins are loaded only for a command that is not built in (or for --help).
    builtin = bool(argv) and argv[0] in BUILTIN_COMMANDS
    args = build_parser(None if builtin else _plugin_commands()).parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())

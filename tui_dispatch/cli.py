"""The ``tui-dispatch`` command (also ``python -m tui_dispatch``).

Usage::

    tui-dispatch [SETTINGS]                      the live dashboard on the in-memory engine
    tui-dispatch --headless [--json] [SETTINGS]  no screen: run --jobs-count jobs, print a summary
    tui-dispatch config [SETTINGS]               print the settings in effect, as a TOML file
    tui-dispatch --redis URL [SETTINGS]          the dashboard watching a Redis fleet
    tui-dispatch worker --redis URL [...]        a worker process of that fleet (see worker --help)

``SETTINGS`` are ``--config FILE.toml`` and the flags listed by ``tui-dispatch --help`` (one per
entry of :data:`tui_dispatch.config.OPTIONS`); flags override the file, the file overrides the
defaults.

Exit status: 0 success; 1 a job was lost; 2 bad usage (unknown flag, bad value, bad config file,
unusable ``--jobs`` target); 3 a job was dead-lettered and ``--fail-on-dlq`` was given;
130 interrupted by Ctrl-C. Details in :mod:`tui_dispatch.headless`.

Extending it: a new way to run the dashboard (``--redis URL`` for a fleet view) is a flag in
the "mode" group and a branch in :func:`_cmd_run` that builds another source for ``make_app``.
A new command (``tui-dispatch worker --redis URL --tasks module``) is a subparser in
:func:`build_parser`, with its own flags, and a ``_cmd_<name>(args, settings) -> int`` entry in
``_COMMANDS``.

Errors the user can fix are one line on stderr (``tui-dispatch: error: ...``) and status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from tui_dispatch.config import (
    OPTIONS,
    Settings,
    SettingsError,
    flag_converter,
    resolve_settings,
)
from tui_dispatch.workload import Workload

if TYPE_CHECKING:
    from tui_dispatch.source import Source

__all__ = ["EXIT_USAGE", "build_parser", "main"]

PROG = "tui-dispatch"
EXIT_USAGE = 2

_EPILOG = """\
commands:
  config          print the settings in effect as a TOML file (a starting point for --config)
  worker          run a worker process that takes jobs from a Redis queue (worker --help)

exit status:
  0    every job succeeded, was dead-lettered or was cancelled, and the counters add up
  1    a job was lost (it never reached a final state, or the counters do not add up)
  2    bad usage: unknown flag, bad value, bad config file, unusable --jobs target
  3    with --headless --fail-on-dlq: at least one job was dead-lettered
  130  interrupted by Ctrl-C (the summary is still printed)

Ctrl-C with --headless: the first drains (finishes queued, scheduled and running jobs), the
second cancels what is queued or scheduled and waits up to --force-wait-s for running jobs,
the third exits at once. The summary is printed after the first two.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _settings_parent() -> _Parser:
    """The settings flags, shared by the top level and every command.

    Defaults are suppressed so that only the flags actually given reach the namespace: they
    override the config file, and everything else falls back to it, then to the defaults.
    """
    defaults = Settings()
    parent = _Parser(add_help=False, allow_abbrev=False)
    parent.add_argument("--config", dest="config_path", metavar="FILE.toml", default=argparse.SUPPRESS,
                        help="read settings from a TOML file; flags override it")
    group = parent.add_argument_group("settings (flags override --config; see 'tui-dispatch config')")
    for option in OPTIONS:
        default = getattr(defaults, option.field)
        shown = "unset" if default is None else str(default).lower() if isinstance(default, bool) else default
        help_text = f"{option.help} [{option.toml}] (default: {shown})"
        if option.is_bool:
            group.add_argument(option.flag, dest=option.field, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(option.flag, dest=option.field, type=flag_converter(option),
                               metavar=option.metavar, default=argparse.SUPPRESS, help=help_text)
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The full ``tui-dispatch`` parser (its errors print one line and exit 2)."""
    parent = _settings_parent()
    parser = _Parser(
        prog=PROG,
        description="A job dispatcher with retries, a DLQ and autoscaling workers, and a live dashboard.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[parent],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    mode = parser.add_argument_group("mode")
    mode.add_argument("--headless", action="store_true",
                      help="no screen: run --jobs-count jobs, show progress, print a summary")
    mode.add_argument("--json", action="store_true", help="with --headless: print the summary as JSON")
    mode.add_argument("--redis", metavar="URL",
                      help="watch a Redis fleet instead of the in-memory engine "
                           "(redis://[user:password@]host:port/db, rediss:// for TLS)")
    mode.add_argument("--queue", default="default", help="with --redis: the queue name (default: default)")
    mode.add_argument("--prefix", default="tui-dispatch",
                      help="with --redis: the key prefix (default: tui-dispatch)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser(
        "config", parents=[parent], allow_abbrev=False,
        help="print the settings in effect as a TOML file",
        description="Print the settings in effect (defaults < --config file < flags) as TOML.",
    )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tui-dispatch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


_MODE_FLAGS = ("--help", "-h", "--version", "--headless", "--json", "--config", "--redis", "--queue", "--prefix")


def _unknown_flag(argv: Sequence[str]) -> str | None:
    """A message for the first ``--flag`` nobody defines, or None.

    argparse would otherwise take the value after an unknown flag for a command name and
    complain about that instead.
    """
    import difflib

    known = set(_MODE_FLAGS)
    for option in OPTIONS:
        known.add(option.flag)
        if option.is_bool:
            known.add("--no-" + option.flag[2:])
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name.startswith("--") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"unrecognized argument {name}{hint}; see '{PROG} --help' for the flags"
    return None


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return EXIT_USAGE


# -- commands ---------------------------------------------------------------------------------------


def _seeded_rngs(settings: Settings) -> tuple[random.Random, random.Random]:
    """(engine rng for retry jitter, workload rng), both derived from ``settings.seed``."""
    master = random.Random(settings.seed)
    return random.Random(master.getrandbits(64)), random.Random(master.getrandbits(64))


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(settings.to_toml())
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """The dashboard, or with ``--headless`` the screenless run."""
    from tui_dispatch.workload import make_workload

    if args.json and not args.headless:
        return _usage_error("--json only applies with --headless")
    if args.redis:
        if args.headless:
            return _usage_error("--headless runs the in-memory engine; for a Redis fleet run 'tui-dispatch worker'")
        return _run_fleet_dashboard(args, settings.with_seed())
    if args.queue != "default" or args.prefix != "tui-dispatch":
        return _usage_error("--queue and --prefix only apply with --redis")
    settings = settings.with_seed()
    engine_rng, workload_rng = _seeded_rngs(settings)
    workload = make_workload(settings, workload_rng)
    if args.headless:
        from tui_dispatch.headless import run_headless

        return run_headless(settings, workload, engine_rng, json_output=args.json)
    return _run_dashboard(settings, workload, engine_rng)


def _run_dashboard(settings: Settings, workload: Workload, engine_rng: random.Random) -> int:
    """Build the engine, hand it to the Textual app, and stop the engine when the app exits."""
    from engine import Dispatcher
    from tui_dispatch.source import LiveSource

    # Quitting with jobs pending is confirmed in the app; the source's close() then cancels what
    # is left (forceful shutdown) unless the engine already stopped.
    return _run_app(LiveSource(Dispatcher(**settings.dispatcher_kwargs(engine_rng)), workload), settings)


def _run_fleet_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    """The dashboard watching every worker process of a Redis queue."""
    from tui_dispatch.fleet_source import make_fleet_source

    return _run_app(make_fleet_source(args.redis, queue=args.queue, prefix=args.prefix, seed=settings.seed),
                    settings)


def _run_app(source: Source, settings: Settings) -> int:
    """Run the dashboard on ``source`` and close the source when the app exits.

    Log lines must not scribble over the screen: the app shows what it wants in its Log panel, so
    the engine's and the app's loggers write nowhere else while it runs.
    """
    from tui_dispatch.app import make_app

    quiet = logging.NullHandler()
    loggers = [logging.getLogger(name) for name in ("engine", "tui_dispatch")]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(quiet)
        logger.propagate = False
    try:
        app = make_app(
            source,
            refresh_s=settings.refresh_s,
            small_burst=settings.small_burst,
            large_burst=settings.large_burst,
            failing_burst=settings.failing_burst,
        )
        app.run()
    finally:
        source.close()
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(quiet)
            logger.setLevel(level)
            logger.propagate = propagate
    return int(app.return_code or 0)


_COMMANDS: dict[str | None, Callable[[argparse.Namespace, Settings], int]] = {
    None: _cmd_run,
    "config": _cmd_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tui-dispatch`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Call from the main thread (the headless run installs a SIGINT handler).
    """
    from engine.errors import ConfigError
    from tui_dispatch.workload import WorkloadError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":  # a worker process has its own flags
        from tui_dispatch.worker_cli import main as worker_main

        return worker_main(argv[1:], prog=f"{PROG} worker")
    parser = build_parser()
    unknown = _unknown_flag(argv)
    if unknown:
        return _usage_error(unknown)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    flag_values = {o.field: getattr(args, o.field) for o in OPTIONS if hasattr(args, o.field)}
    try:
        settings = resolve_settings(flag_values, getattr(args, "config_path", None))
        return _COMMANDS[args.command](args, settings)
    except (SettingsError, WorkloadError, ConfigError) as exc:
        return _usage_error(str(exc))
    except KeyboardInterrupt:  # Ctrl-C outside the headless run's own handling
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130

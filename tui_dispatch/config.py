"""Settings for the dashboard and the headless runner: defaults, a TOML file, and flags.

Every setting can be given three ways, and the later one wins::

    built-in default  <  the TOML file named by --config  <  a command-line flag

One table, :data:`OPTIONS`, names each setting's attribute, TOML key, flag, type, bounds and
help, so the flags, the file format, the validation and the generated docs cannot drift
apart. A TOML file looks like this (every key optional; ``tui-dispatch config`` prints the
full set with the values in effect)::

    seed = 42
    log_interval_s = 10.0
    jobs = "myapp.jobs:resize"      # optional: run your callable instead of the demo

    [workers]
    min = 1
    max = 8
    autoscale = true

    [retry]
    max_retries = 3
    base_s = 0.1
    factor = 2.0
    cap_s = 10.0
    jitter = "equal"                # "none", "full" or "equal"

    [bursts]
    small = 100
    large = 10000
    failing = 100

    [demo]
    distribution = "lognormal"      # "lognormal", "uniform" or "fixed"
    mean_ms = 50.0
    spread_ms = 30.0
    failure_rate = 0.05
    failing_failure_rate = 0.9

    [shutdown]
    force_wait_s = 1.0

    [ui]
    refresh_s = 0.25

    [headless]
    count = 1000
    fail_on_dlq = false

Every problem raises :class:`SettingsError` with one line that names the flag or key and the
allowed values; the CLI prints it and exits with status 2.

Nothing here starts threads or reads the clock. The functions are thread-safe (pure).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import random
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from engine.errors import ConfigError
from engine.policy.autoscale import AutoscalePolicy
from engine.policy.backoff import RetryPolicy

__all__ = [
    "DISTRIBUTIONS",
    "JITTERS",
    "OPTIONS",
    "Option",
    "Settings",
    "SettingsError",
    "flag_converter",
    "load_toml",
    "resolve_settings",
]

JITTERS: tuple[str, ...] = ("none", "full", "equal")
DISTRIBUTIONS: tuple[str, ...] = ("lognormal", "uniform", "fixed")

Distribution = Literal["lognormal", "uniform", "fixed"]
Jitter = Literal["none", "full", "equal"]


class SettingsError(ValueError):
    """A bad flag value, config file or setting. ``str()`` is one line fit for the user."""


class _Invalid(Exception):
    """A value failed its check; the message says what is allowed, without naming the setting."""


# -- value kinds ---------------------------------------------------------------------------------
# Each kind converts a flag's text (``from_text``) and checks a typed value, from a TOML file or
# from Python (``check``). Both raise _Invalid with the allowed values.


def _describe_range(low: float | None, high: float | None, *, noun: str) -> str:
    if low is not None and high is not None:
        return f"{noun} from {low:g} to {high:g}"
    if low is not None:
        return f"{noun} >= {low:g}"
    if high is not None:
        return f"{noun} <= {high:g}"
    return noun


@dataclass(frozen=True, slots=True)
class _Int:
    low: int | None = None
    high: int | None = None
    optional: bool = False

    def allowed(self) -> str:
        return _describe_range(self.low, self.high, noun="an integer")

    def from_text(self, text: str) -> int:
        try:
            value = int(text.replace("_", ""), 10)
        except ValueError:
            raise _Invalid(f"must be {self.allowed()}; got {text!r}") from None
        return self.check(value)

    def check(self, value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class _Float:
    low: float | None = None
    high: float | None = None
    optional: bool = False

    def allowed(self) -> str:
        return _describe_range(self.low, self.high, noun="a number")

    def from_text(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _Invalid(f"must be {self.allowed()}; got {text!r}") from None
        return self.check(value)

    def check(self, value: object) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        return float(value)


@dataclass(frozen=True, slots=True)
class _Choice:
    choices: tuple[str, ...]
    optional: bool = False

    def allowed(self) -> str:
        return "one of " + ", ".join(self.choices)

    def from_text(self, text: str) -> str:
        return self.check(text)

    def check(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class _Bool:
    optional: bool = False

    def allowed(self) -> str:
        return "true or false"

    def from_text(self, text: str) -> bool:  # flags use --x/--no-x; this serves completeness
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise _Invalid(f"must be {self.allowed()}; got {text!r}")

    def check(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class _Target:
    """``module:callable``, as for ``--jobs``. Whether it imports is checked by the workload."""

    optional: bool = True

    def allowed(self) -> str:
        return "'module:callable', e.g. 'myapp.jobs:resize'"

    def from_text(self, text: str) -> str:
        return self.check(text)

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        module, sep, attr = value.partition(":")
        if not sep or not module.strip() or not attr.strip() or " " in value:
            raise _Invalid(f"must be {self.allowed()}; got {value!r}")
        return value


_Kind = _Int | _Float | _Choice | _Bool | _Target


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its :class:`Settings` attribute, TOML key, flag, kind and help.

    Attributes:
        field: the :class:`Settings` attribute.
        toml: the dotted TOML key (``"workers.min"``); no dot means a top-level key.
        flag: the command-line flag (``"--min-workers"``). Booleans also get ``--no-...``.
        kind: how values are converted and checked.
        help: one line for ``--help`` and the docs.
        metavar: the placeholder shown in ``--help``.
    """

    field: str
    toml: str
    flag: str
    kind: _Kind
    help: str
    metavar: str | None = None

    @property
    def is_bool(self) -> bool:
        return isinstance(self.kind, _Bool)

    @property
    def label(self) -> str:
        """How the user may have named it: ``--min-workers/workers.min``."""
        return f"{self.flag}/{self.toml}"

    def from_text(self, text: str) -> Any:
        """Convert a flag's text. Raises :class:`_Invalid` with the allowed values."""
        return self.kind.from_text(text)

    def check(self, value: object) -> Any:
        """Check (and normalise) a typed value. Raises :class:`_Invalid`."""
        if value is None and self.kind.optional:
            return None
        return self.kind.check(value)


# The single source of truth for every setting. Order is the order of --help and of the docs.
OPTIONS: tuple[Option, ...] = (
    Option("min_workers", "workers.min", "--min-workers", _Int(1, 10_000),
           "fewest worker threads (the pool starts here)", "N"),
    Option("max_workers", "workers.max", "--max-workers", _Int(1, 10_000),
           "most worker threads autoscaling may add", "N"),
    Option("autoscale", "workers.autoscale", "--autoscale", _Bool(),
           "grow and shrink the pool with the load (--no-autoscale: fixed at min workers)"),
    Option("max_retries", "retry.max_retries", "--max-retries", _Int(0, 1_000),
           "retries after a job's first failed attempt before it goes to the DLQ", "N"),
    Option("retry_base_s", "retry.base_s", "--retry-base-s", _Float(0.0, 3600.0),
           "delay before the first retry, in seconds (before jitter)", "SECONDS"),
    Option("retry_factor", "retry.factor", "--retry-factor", _Float(1.0, 100.0),
           "backoff growth per retry", "X"),
    Option("retry_cap_s", "retry.cap_s", "--retry-cap-s", _Float(0.0, 86_400.0),
           "largest retry delay, in seconds (before jitter)", "SECONDS"),
    Option("retry_jitter", "retry.jitter", "--retry-jitter", _Choice(JITTERS),
           "jitter on retry delays: " + ", ".join(JITTERS), "KIND"),
    Option("small_burst", "bursts.small", "--small-burst", _Int(1, 10_000_000),
           "jobs in a small burst", "N"),
    Option("large_burst", "bursts.large", "--large-burst", _Int(1, 10_000_000),
           "jobs in a large burst", "N"),
    Option("failing_burst", "bursts.failing", "--failing-burst", _Int(1, 10_000_000),
           "jobs in a failing burst", "N"),
    Option("job_distribution", "demo.distribution", "--job-distribution", _Choice(DISTRIBUTIONS),
           "demo job duration distribution: " + ", ".join(DISTRIBUTIONS), "KIND"),
    Option("job_mean_ms", "demo.mean_ms", "--job-mean-ms", _Float(0.0, 3_600_000.0),
           "mean demo job duration, in milliseconds", "MS"),
    Option("job_spread_ms", "demo.spread_ms", "--job-spread-ms", _Float(0.0, 3_600_000.0),
           "spread of demo job durations in ms (lognormal: std dev; uniform: +/- range)", "MS"),
    Option("failure_rate", "demo.failure_rate", "--failure-rate", _Float(0.0, 1.0),
           "chance that a demo job's attempt fails", "P"),
    Option("failing_failure_rate", "demo.failing_failure_rate", "--failing-failure-rate",
           _Float(0.0, 1.0), "chance that an attempt of a failing-burst job fails", "P"),
    Option("force_wait_s", "shutdown.force_wait_s", "--force-wait-s", _Float(0.0, 3600.0),
           "how long a forceful shutdown waits for running jobs before abandoning them", "SECONDS"),
    Option("refresh_s", "ui.refresh_s", "--refresh-s", _Float(0.05, 60.0),
           "dashboard refresh interval, in seconds", "SECONDS"),
    Option("log_interval_s", "log_interval_s", "--log-interval-s", _Float(0.0, 86_400.0),
           "seconds between the engine's metrics log lines (0: off)", "SECONDS"),
    Option("seed", "seed", "--seed", _Int(0, 2**63 - 1, optional=True),
           "random seed for demo jobs and retry jitter; unset: a fresh one, shown in the summary", "N"),
    Option("jobs_target", "jobs", "--jobs", _Target(),
           "run your callable or job factory instead of the demo jobs", "MODULE:CALLABLE"),
    Option("headless_jobs", "headless.count", "--jobs-count", _Int(1, 100_000_000),
           "with --headless: how many jobs to run", "N"),
    Option("fail_on_dlq", "headless.fail_on_dlq", "--fail-on-dlq", _Bool(),
           "with --headless: exit 3 if any job was dead-lettered"),
)

_BY_FIELD: dict[str, Option] = {o.field: o for o in OPTIONS}
_BY_TOML: dict[str, Option] = {o.toml: o for o in OPTIONS}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the dashboard and the headless runner need to know. Immutable.

    See :data:`OPTIONS` (or ``tui-dispatch --help``) for what each field means. Build one
    with :func:`resolve_settings` from a file and flags, or directly in Python; either way
    every field is checked and a bad one raises :class:`SettingsError`.
    """

    min_workers: int = 1
    max_workers: int = 8
    autoscale: bool = True
    max_retries: int = 3
    retry_base_s: float = 0.1
    retry_factor: float = 2.0
    retry_cap_s: float = 10.0
    retry_jitter: Jitter = "equal"
    small_burst: int = 100
    large_burst: int = 10_000
    failing_burst: int = 100
    job_distribution: Distribution = "lognormal"
    job_mean_ms: float = 50.0
    job_spread_ms: float = 30.0
    failure_rate: float = 0.05
    failing_failure_rate: float = 0.9
    force_wait_s: float = 1.0
    refresh_s: float = 0.25
    log_interval_s: float = 10.0
    seed: int | None = None
    jobs_target: str | None = None
    headless_jobs: int = 1000
    fail_on_dlq: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            option = _BY_FIELD[f.name]
            try:
                value = option.check(getattr(self, f.name))
            except _Invalid as exc:
                raise SettingsError(f"{option.label}: {exc}") from None
            object.__setattr__(self, f.name, value)
        if self.min_workers > self.max_workers:
            raise SettingsError(
                f"--min-workers/workers.min ({self.min_workers}) must be <= "
                f"--max-workers/workers.max ({self.max_workers})"
            )

    # -- what the engine is built from ---------------------------------------------------------
    def retry_policy(self) -> RetryPolicy:
        """The engine retry policy these settings describe."""
        try:
            return RetryPolicy(max_retries=self.max_retries, base_s=self.retry_base_s,
                               factor=self.retry_factor, cap_s=self.retry_cap_s,
                               jitter=self.retry_jitter)
        except ConfigError as exc:  # pragma: no cover - the checks above are stricter
            raise SettingsError(f"retry policy: {exc}") from None

    def dispatcher_kwargs(self, rng: random.Random) -> dict[str, Any]:
        """Keyword arguments for ``engine.Dispatcher`` (its retry jitter draws from ``rng``)."""
        return {
            "min_workers": self.min_workers,
            "max_workers": self.max_workers,
            "retry": self.retry_policy(),
            "autoscale": AutoscalePolicy() if self.autoscale else False,
            "log_interval_s": self.log_interval_s,
            "force_wait_s": self.force_wait_s,
            "rng": rng,
        }

    def with_seed(self) -> Settings:
        """These settings with ``seed`` filled in from the OS if it was not given."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=int.from_bytes(os.urandom(4), "big"))

    def to_toml(self) -> str:
        """These settings as a TOML file that :func:`load_toml` reads back to the same values.

        Unset optional values (``seed``, ``jobs``) are written as comments.
        """
        top: list[str] = []
        tables: dict[str, list[str]] = {}
        for option in OPTIONS:
            value = getattr(self, option.field)
            section, _, key = option.toml.rpartition(".")
            line = (f"# {key} = ...  # {option.help}" if value is None
                    else f"{key} = {_toml_value(value)}  # {option.help}")
            (tables.setdefault(section, []) if section else top).append(line)
        out = [*top]
        for section, lines in tables.items():
            out += ["", f"[{section}]", *lines]
        return "\n".join(out) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


# -- the TOML file -------------------------------------------------------------------------------


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file into ``{settings field: checked value}``.

    Args:
        path: the file.

    Returns:
        Only the settings the file gives.

    Raises:
        SettingsError: the file cannot be read, is not valid TOML, has an unknown table or
            key, or a bad value. The message starts with the path and names the key.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"--config {where}: no such file") from None
    except IsADirectoryError:
        raise SettingsError(f"--config {where}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise SettingsError(f"--config {where}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SettingsError(f"--config {where}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config {where}: invalid TOML: {exc}") from None
    return _values_from_document(document, where)


def _values_from_document(document: Mapping[str, Any], where: str) -> dict[str, Any]:
    sections = sorted({o.toml.rpartition(".")[0] for o in OPTIONS} - {""})
    top_keys = sorted(o.toml for o in OPTIONS if "." not in o.toml)
    values: dict[str, Any] = {}
    for name, item in document.items():
        if name in sections:
            if not isinstance(item, dict):
                raise SettingsError(f"{where}: [{name}] must be a table; got {item!r}")
            allowed = sorted(o.toml.rpartition(".")[2] for o in OPTIONS if o.toml.startswith(name + "."))
            for key, value in item.items():
                option = _BY_TOML.get(f"{name}.{key}")
                if option is None:
                    raise SettingsError(
                        f"{where}: unknown key '{name}.{key}'{_did_you_mean(key, allowed)} "
                        f"(allowed in [{name}]: {', '.join(allowed)})"
                    )
                values[option.field] = _check(option, value, where)
        elif name in _BY_TOML and "." not in name:
            values[_BY_TOML[name].field] = _check(_BY_TOML[name], item, where)
        else:
            everything = top_keys + [f"[{s}]" for s in sections]
            raise SettingsError(
                f"{where}: unknown key '{name}'{_did_you_mean(name, top_keys + sections)} "
                f"(allowed: {', '.join(everything)})"
            )
    return values


def _check(option: Option, value: object, where: str) -> Any:
    try:
        return option.check(value)
    except _Invalid as exc:
        raise SettingsError(f"{where}: {option.toml} {exc}") from None


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- putting it together ---------------------------------------------------------------------------


def resolve_settings(
    flag_values: Mapping[str, Any] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """Defaults, overridden by the config file, overridden by flags.

    Args:
        flag_values: ``{settings field: value}`` for the flags actually given (already converted).
        config_path: a TOML file, or ``None``.

    Returns:
        The checked settings (``seed`` stays ``None`` if nobody gave one).

    Raises:
        SettingsError: a bad file, key or value, or values that disagree (min > max workers).
    """
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(load_toml(config_path))
    for name, value in (flag_values or {}).items():
        if name not in _BY_FIELD:
            raise SettingsError(f"unknown setting {name!r} (allowed: {', '.join(_BY_FIELD)})")
        values[name] = value
    return Settings(**values)


def flag_converter(option: Option) -> Callable[[str], Any]:
    """An argparse ``type=`` function for ``option`` whose error message lists the allowed values."""
    import argparse

    def convert(text: str) -> Any:
        try:
            return option.from_text(text)
        except _Invalid as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.field  # argparse names the type in some messages
    return convert

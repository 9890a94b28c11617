"""Settings: defaults, the TOML file, flags over the file, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from tui_dispatch import cli
from tui_dispatch.config import (
    DISTRIBUTIONS,
    JITTERS,
    OPTIONS,
    Settings,
    SettingsError,
    load_toml,
    resolve_settings,
)


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the option table ---------------------------------------------------------------------------


def test_every_settings_field_has_exactly_one_option_with_unique_flag_and_key() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert sorted(o.field for o in OPTIONS) == sorted(names)
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)
    assert len({o.toml for o in OPTIONS}) == len(OPTIONS)


def test_defaults_are_valid_and_build_an_engine_retry_policy() -> None:
    s = Settings()
    policy = s.retry_policy()
    assert (policy.max_retries, policy.base_s, policy.factor, policy.cap_s, policy.jitter) == (
        s.max_retries, s.retry_base_s, s.retry_factor, s.retry_cap_s, s.retry_jitter)
    kwargs = s.dispatcher_kwargs(rng=__import__("random").Random(1))
    assert kwargs["min_workers"] == s.min_workers and kwargs["max_workers"] == s.max_workers


def test_with_seed_fills_in_a_seed_only_when_missing() -> None:
    assert Settings(seed=5).with_seed().seed == 5
    drawn = Settings().with_seed().seed
    assert isinstance(drawn, int) and drawn >= 0


# -- the TOML file -------------------------------------------------------------------------------


def test_toml_file_sets_values_by_section(tmp_path: Path) -> None:
    path = write(tmp_path, """
        seed = 42
        jobs = "mymod:work"
        [workers]
        min = 2
        max = 5
        autoscale = false
        [retry]
        jitter = "full"
        base_s = 1            # an int where a float is expected is fine
        [demo]
        distribution = "uniform"
        failure_rate = 0.5
        [headless]
        count = 77
        fail_on_dlq = true
    """)
    s = resolve_settings({}, path)
    assert (s.seed, s.jobs_target, s.min_workers, s.max_workers, s.autoscale) == (42, "mymod:work", 2, 5, False)
    assert (s.retry_jitter, s.retry_base_s, s.job_distribution, s.failure_rate) == ("full", 1.0, "uniform", 0.5)
    assert (s.headless_jobs, s.fail_on_dlq) == (77, True)
    assert s.small_burst == Settings().small_burst  # untouched keys keep their defaults


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nmin = 2\nmax = 5\n[bursts]\nsmall = 3\n")
    s = resolve_settings({"max_workers": 9, "small_burst": 4}, path)
    assert (s.min_workers, s.max_workers, s.small_burst) == (2, 9, 4)


def test_config_command_prints_the_merged_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[workers]\nmax = 5\n[bursts]\nlarge = 500\n")
    assert cli.main(["config", "--config", str(path), "--max-workers", "12", "--no-autoscale"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["workers"] == {"min": 1, "max": 12, "autoscale": False}
    assert printed["bursts"]["large"] == 500
    # The flags may also come before the command.
    assert cli.main(["--seed", "9", "config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["seed"] == 9


def test_unset_optional_values_are_commented_out_in_the_printed_toml() -> None:
    text = Settings().to_toml()
    assert "# seed = " in text and "# jobs = " in text
    assert "seed" not in tomllib.loads(text)


@hyp_settings(max_examples=60, deadline=None)
@given(
    workers=st.tuples(st.integers(1, 10_000), st.integers(1, 10_000)).map(sorted),
    retries=st.integers(0, 1_000),
    base=st.floats(0, 3600, allow_nan=False),
    jitter=st.sampled_from(JITTERS),
    distribution=st.sampled_from(DISTRIBUTIONS),
    rate=st.floats(0, 1),
    seed=st.none() | st.integers(0, 2**63 - 1),
    target=st.none() | st.from_regex(r"[a-z_][a-z0-9_.]{0,10}:[a-z_][a-z0-9_]{0,10}", fullmatch=True),
    refresh=st.floats(0.05, 60),
)
def test_printed_toml_reads_back_to_the_same_settings(
    workers: list[int], retries: int, base: float, jitter: str, distribution: str, rate: float,
    seed: int | None, target: str | None, refresh: float,
) -> None:
    original = Settings(min_workers=workers[0], max_workers=workers[1], max_retries=retries, retry_base_s=base,
                        retry_jitter=jitter, job_distribution=distribution,  # type: ignore[arg-type]
                        failure_rate=rate, seed=seed, jobs_target=target, refresh_s=refresh)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), original.to_toml())
        assert resolve_settings({}, path) == original


# -- bad files and values: one line that names the key and the allowed values --------------------


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[workers]\nmn = 2\n", ["unknown key 'workers.mn'", "did you mean 'min'", "allowed in [workers]: autoscale, max, min"]),
        ("sed = 3\n", ["unknown key 'sed'", "did you mean 'seed'", "allowed:"]),
        ("[wrokers]\nmin = 2\n", ["unknown key 'wrokers'", "did you mean 'workers'"]),
        ("workers = 3\n", ["[workers] must be a table"]),
        ("[workers]\nmin = 0\n", ["workers.min must be an integer from 1 to 10000; got 0"]),
        ("[workers]\nmin = 1.5\n", ["workers.min must be an integer"]),
        ("[workers]\nautoscale = \"yes\"\n", ["workers.autoscale must be true or false"]),
        ("[retry]\njitter = \"lots\"\n", ["retry.jitter must be one of none, full, equal; got 'lots'"]),
        ("[retry]\nfactor = 0.5\n", ["retry.factor must be a number from 1 to 100"]),
        ("[demo]\nfailure_rate = 2\n", ["demo.failure_rate must be a number from 0 to 1"]),
        ("[demo]\nmean_ms = \"fast\"\n", ["demo.mean_ms must be a number"]),
        ("[demo]\ndistribution = \"normal\"\n", ["demo.distribution must be one of lognormal, uniform, fixed"]),
        ("jobs = \"no-colon\"\n", ["jobs must be 'module:callable'"]),
        ("[workers]\nmin = 5\nmax = 2\n", ["--min-workers/workers.min (5) must be <= --max-workers/workers.max (2)"]),
        ("[workers\nmin = 2\n", ["invalid TOML", "line 1"]),
        ("seed = \n", ["invalid TOML"]),
    ],
)
def test_bad_config_files_raise_one_line_naming_the_problem(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        resolve_settings({}, path)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_toml(tmp_path / "missing.toml")
    with pytest.raises(SettingsError, match="is a directory"):
        load_toml(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"seed = 1\n\xff\xfe\n")
    with pytest.raises(SettingsError, match="not a UTF-8 text file"):
        load_toml(binary)


def test_settings_built_in_python_are_checked_too() -> None:
    with pytest.raises(SettingsError, match=r"--max-retries/retry.max_retries: must be an integer from 0 to 1000; got -1"):
        Settings(max_retries=-1)
    with pytest.raises(SettingsError, match=r"--refresh-s/ui.refresh_s: must be a number from 0.05 to 60; got 0"):
        Settings(refresh_s=0)
    with pytest.raises(SettingsError, match="must be true or false"):
        Settings(autoscale=1)  # type: ignore[arg-type]


# -- flags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--bogus"], ["unrecognized argument --bogus; see 'tui-dispatch --help'"]),
        (["--min-worker", "2"], ["unrecognized argument --min-worker (did you mean --min-workers?)"]),
        (["config", "--max-workers=3", "--no-autoscal"], ["unrecognized argument --no-autoscal"]),
        (["-x"], ["unrecognized arguments: -x"]),
        (["--min-workers", "zero"], ["argument --min-workers: must be an integer from 1 to 10000; got 'zero'"]),
        (["--failure-rate", "1.5"], ["argument --failure-rate: must be a number from 0 to 1; got 1.5"]),
        (["--retry-jitter", "some"], ["argument --retry-jitter: must be one of none, full, equal; got 'some'"]),
        (["--jobs", "nocolon"], ["argument --jobs: must be 'module:callable'"]),
        (["--min-workers", "4", "--max-workers", "3"], ["(4) must be <= --max-workers/workers.max (3)"]),
        (["--json"], ["--json only applies with --headless"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["--config", "/nonexistent/x.toml"], ["--config /nonexistent/x.toml: no such file"]),
    ],
)
def test_bad_flags_give_one_line_and_status_2(
    argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tui-dispatch: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_help_lists_every_flag_with_its_toml_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's wrapping
    for option in OPTIONS:
        assert option.flag in out and f"[{option.toml}]" in out, option
    assert "exit status" in out and "130" in out

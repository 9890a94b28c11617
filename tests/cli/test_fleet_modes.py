"""The CLI's Redis modes: ``tui-dispatch worker ...`` and ``tui-dispatch --redis URL``."""

from __future__ import annotations

import pytest

from tui_dispatch import cli


def test_worker_command_is_routed_to_the_worker_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["worker", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tui-dispatch worker") and "--redis URL" in out


def test_worker_without_redis_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "--redis" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--queue", "q1"], "--queue and --prefix only apply with --redis"),
        (["--prefix", "p"], "--queue and --prefix only apply with --redis"),
        (["--redis", "redis://127.0.0.1:6379/0", "--headless"], "for a Redis fleet run 'tui-dispatch worker'"),
        (["--redis", "http://example.invalid"], "redis"),
    ],
)
def test_fleet_flags_misused_give_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_fleet_dashboard_builds_a_fleet_source_and_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, object] = {}

    class FakeSource:
        closed = False

        def close(self) -> None:
            FakeSource.closed = True

    def fake_make_fleet_source(url: str, **kw: object) -> FakeSource:
        made.update(url=url, **kw)
        return FakeSource()

    class FakeApp:
        return_code = 0

        def run(self) -> None:
            made["ran"] = True

    def fake_make_app(source: object, **kw: object) -> FakeApp:
        made["source"] = source
        made["app_kw"] = kw
        return FakeApp()

    import tui_dispatch.app
    import tui_dispatch.fleet_source

    monkeypatch.setattr(tui_dispatch.fleet_source, "make_fleet_source", fake_make_fleet_source)
    monkeypatch.setattr(tui_dispatch.app, "make_app", fake_make_app)
    code = cli.main(["--redis", "redis://h:6379/2", "--queue", "emails", "--prefix", "acme", "--small-burst", "7"])
    assert code == 0
    assert made["url"] == "redis://h:6379/2" and made["queue"] == "emails" and made["prefix"] == "acme"
    assert isinstance(made["source"], FakeSource) and made["ran"] is True
    assert made["app_kw"]["small_burst"] == 7  # type: ignore[index]
    assert FakeSource.closed

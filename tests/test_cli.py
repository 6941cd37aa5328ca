"""Tests of the ``cellcrowd`` command: every subcommand's happy path and its errors."""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cellcrowd
from cellcrowd import cli, cli_output, pipeline
from cellcrowd.cli import main
from cellcrowd.config import API_KEY_VARIABLES, Config, load_config
from cellcrowd.pipeline import STAGES, working_folder
from cellcrowd.sim import emulator as emulator_module
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config

SETTINGS = ExampleSettings(frames=10, shape=(64, 64), cells=4, divisions=1, montage_len=5,
                           row_length=5)
KEY = "cli-secret-key-0123456789"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("cli-prepared"), SETTINGS)


@pytest.fixture(scope="module")
def served(example: Example) -> Iterator[tuple[Any, Config]]:
    with emulated_job(example, api_key=KEY) as job:
        yield job


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def config(served: tuple[Any, Config], example: Example, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    dest = tmp_path / "work"
    shutil.copytree(example.config.base, dest)
    path = dest / "cellcrowd.toml"
    save_config(served[1].model_copy(update={"base": dest, "raw": None}), path)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_writes_a_loadable_example_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "my.toml"
    code, out, _ = _run(capsys, "init", str(path), "--identifier", "abc", "--job-id", "9")
    assert code == 0
    assert f"wrote {path}" in out
    cfg = load_config(path)
    assert (cfg.identifier, cfg.job_id) == ("abc", 9)
    code, out, err = _run(capsys, "init", str(path))
    assert code == 2
    assert out == ""
    assert err.strip().startswith("cellcrowd: error:")
    assert "file exists" in err
    assert f"cellcrowd init {path} --force" in err  # how to overwrite it
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert _run(capsys, "init", str(path), "--force")[0] == 0


def test_run_status_and_rerun(config: Path, capsys: pytest.CaptureFixture[str],
                              served: tuple[Any, Config]) -> None:
    code, out, _ = _run(capsys, "status", str(config))
    assert code == 0
    assert out.count("pending") == len(STAGES)
    assert "left to do: report, fetch" in out

    code, out, err = _run(capsys, "run", str(config), "--workers", "1")
    assert code == 0, err
    assert "totals: units" in out
    assert "judgments" in out
    wf = working_folder(load_config(config))
    assert str(wf.base) in out
    assert str(wf.trk.relative_to(wf.base)) in out  # the outputs' paths
    assert "npz/ (2 files)" in out
    assert KEY not in out + err

    seen = dict(served[0].counts)
    code, out, _ = _run(capsys, "run", str(config))
    assert code == 0
    assert out.count("up-to-date") == len(STAGES)
    assert dict(served[0].counts) == seen
    code, out, _ = _run(capsys, "status", str(config))
    assert "left to do: nothing" in out


def test_one_stage_at_a_time(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = [[name] for name in ("report", "fetch", "clean", "movies", "npz", "stitch")]
    commands += [["export", "trk"], ["export", "ctc"], ["export", "omezarr"], ["export", "geff"],
                 ["qc"]]
    for command, stage in zip(commands, STAGES, strict=True):
        code, out, err = _run(capsys, *command, str(config))
        assert code == 0, err
        row = next(line for line in out.splitlines() if f" {stage} " in line)
        assert " ran " in row, out
    code, out, _ = _run(capsys, "npz", str(config), "--force")
    row = next(line for line in out.splitlines() if " npz " in line)
    assert " ran " in row
    code, out, _ = _run(capsys, "run", str(config), "--from", "clean", "--until", "movies",
                        "--force", "clean", "--set", "clean.min_size=12")
    assert code == 0
    assert "not-selected" in out


def test_prepare(tmp_path: Path, example: Example, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(example.config.raw_folder, tmp_path / "raw")
    path = tmp_path / "c.toml"
    assert _run(capsys, "init", str(path), "--identifier", "p")[0] == 0
    code, out, err = _run(capsys, "prepare", str(path), "--set", "prepare.montage_len=5",
                          "--set", "prepare.num_x=1", "--set", "prepare.num_y=1")
    assert code == 0, err
    assert "prepared 2 montages of 10 frames" in out
    assert len(list((tmp_path / "montages").glob("p_*.png"))) == 2
    assert "prepare" in err  # the progress bar, on stderr
    assert "2/2" in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        pytest.param(["run", "{missing}"], "configuration file not found", id="no-config"),
        pytest.param(["run", "{config}", "--from", "nope"], "unknown stage 'nope'",
                     id="bad-stage"),
        pytest.param(["run", "{config}", "--set", "min_size"], "expected KEY=VALUE",
                     id="bad-set"),
        pytest.param(["status", "{config}", "--set", "clean.min_size=-3"],
                     r"clean\.min_size", id="bad-value"),
        pytest.param(["run", "{config}", "--scheduler", "tcp://127.0.0.1:9"],
                     "cannot reach the dask scheduler at tcp://127.0.0.1:9", id="no-scheduler"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
    match: str, request: pytest.FixtureRequest,
) -> None:
    if "--scheduler" in argv:
        dask = pytest.importorskip("dask")
        pytest.importorskip("distributed")
        stack = contextlib.ExitStack()
        stack.enter_context(dask.config.set({"distributed.comm.timeouts.connect": "1s"}))
        request.addfinalizer(stack.close)
    filled = [a.format(config=config, missing=tmp_path / "missing.toml") for a in argv]
    code, out, err = _run(capsys, *filled)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err  # one line (progress bars may come before it)
    assert lines[0].startswith("cellcrowd: error: ")
    assert re.search(match, lines[0])


@pytest.mark.parametrize(
    "command",
    [["run"], ["status"], ["report"], ["fetch"], ["clean"], ["movies"], ["npz"], ["stitch"],
     ["export", "trk"], ["export", "ctc"]],
    ids=lambda c: "-".join(c),
)
def test_every_stage_command_reports_a_broken_log(
    config: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    log = config.parent / "json_logs" / "demo_montage_maker_log.json"
    log.write_text("{not json")
    code, out, err = _run(capsys, *command, str(config))
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"cellcrowd: error: {log}: not valid JSON (Expecting property name enclosed in double "
        "quotes at line 1)")


def test_prepare_without_raw_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    assert _run(capsys, "init", str(path))[0] == 0
    code, out, err = _run(capsys, "prepare", str(path))
    assert code == 2
    assert out == ""
    assert "folder not found" in err
    assert str(tmp_path / "raw") in err


def test_a_refused_key_never_shows(config: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-key-that-must-not-leak"
    monkeypatch.setenv("CELLCROWD_API_KEY", wrong)
    code, out, err = _run(capsys, "-v", "report", str(config))
    assert code == 2
    assert "401" in err or "refused" in err.lower()
    assert wrong not in out + err
    assert KEY not in out + err


def test_quiet_prints_nothing_but_errors(config: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "-q", "run", str(config))
    assert code == 0
    assert (out, err) == ("", "")
    code, out, err = _run(capsys, "-q", "run", str(config), "--from", "nope")
    assert code == 2
    assert out == ""
    assert "unknown stage" in err


def test_verbose_shows_the_library_log(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "-v", "report", str(config))
    assert code == 0
    assert "report: running (never run)" in err


def test_emulator_serve(example: Example, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    real = emulator_module.serve_forever
    stop = threading.Event()
    stop.set()  # serve, announce, and return at once

    def serve_once(*args: Any, **kwargs: Any) -> Any:
        return real(*args, stop=stop, **kwargs)

    monkeypatch.setattr(emulator_module, "serve_forever", serve_once)
    code, out, err = _run(capsys, "emulator", "serve", str(example.config.base),
                          "--identifier", "demo", "--job-id", "3")
    assert code == 0, err
    assert "serving job 3 of" in out
    assert "http://127.0.0.1:" in out
    assert "served 0 requests, 0 annotations (0 distinct)" in " ".join(out.split())
    assert KEY not in out + err
    monkeypatch.delenv("CELLCROWD_API_KEY")
    code, _, err = _run(capsys, "emulator", "serve", str(example.config.base),
                        "--identifier", "demo")
    assert code == 2
    assert "API key" in err


def test_python_dash_m_and_version() -> None:
    done = subprocess.run([sys.executable, "-m", "cellcrowd", "--version"], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"cellcrowd {cellcrowd.__version__}"


def _parsers(parser: argparse.ArgumentParser, name: str = "cellcrowd"
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_has_help() -> None:
    seen = 0
    for name, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            seen += 1
            hidden = action.help == argparse.SUPPRESS  # -v/-q repeated after the command
            assert hidden or (action.help or "").strip(), (name, action.option_strings
                                                          or action.dest)
    assert seen > 60


def test_summary_fits_80_columns(config: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = _run(capsys, "run", str(config))
    assert code == 0, err
    assert "totals: units" in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    code, out, _ = _run(capsys, "status", str(config))
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


def test_api_url_flag_then_environment_then_file(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    in_file = load_config(config).service.api_url
    assert _run(capsys, "report", str(config))[0] == 0

    def report_state(*extra: str) -> str:
        code, out, err = _run(capsys, "status", str(config), *extra)
        assert code == 0, err
        return next(line for line in out.splitlines() if " report " in line)

    assert " done " in report_state()
    monkeypatch.setenv("CELLCROWD_API_URL", "http://127.0.0.1:9/v1")
    assert "api_url" in report_state()  # the environment beats the file
    assert " done " in report_state("--api-url", in_file)  # the flag beats both
    monkeypatch.setenv("CELLCROWD_API_URL", "ftp://nowhere")
    code, _, err = _run(capsys, "status", str(config))
    assert code == 2
    assert "CELLCROWD_API_URL='ftp://nowhere' is not an http(s) URL" in err


def test_key_is_asked_before_any_progress_bar(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    served: tuple[Any, Config],
) -> None:
    for name in API_KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    events: list[str] = []
    real_enter = cli_output.RichProgress.__enter__

    def enter(self: Any) -> Any:
        events.append("bars")
        return real_enter(self)

    monkeypatch.setattr(cli_output.RichProgress, "__enter__", enter)
    # No terminal (pytest's stdin): the run fails at once, naming the variables to set.
    seen = dict(served[0].counts)
    code, _out, err = _run(capsys, "run", str(config))
    assert code == 2
    assert "no terminal to ask for one: set one of CELLCROWD_API_KEY" in err
    assert events == []
    assert dict(served[0].counts) == seen
    # With a terminal the key is asked for before the bars start.
    monkeypatch.setattr(cli, "get_api_key", lambda prompt: events.append("key") or KEY)
    code, _out, err = _run(capsys, "run", str(config), "--until", "fetch")
    assert code == 0, err
    assert events == ["key", "bars"]
    events.clear()
    looked: list[dict[str, Any]] = []
    real_status = pipeline.status

    def status(config: Config, **kwargs: Any) -> Any:
        looked.append(kwargs)
        return real_status(config, **kwargs)

    monkeypatch.setattr(pipeline, "status", status)
    code, _out, err = _run(capsys, "run", str(config), "--until", "fetch")  # up to date
    assert code == 0, err
    assert events == ["bars"]
    assert looked == [{"until": "fetch"}]  # only the stages that need the key are looked at
    # A run after the service stages neither asks for the key nor hashes the folder's
    # outputs to find out whether it will need it.
    events.clear()
    code, _out, err = _run(capsys, "run", str(config), "--from", "clean", "--until", "clean")
    assert code == 0, err
    assert events == ["bars"]
    assert looked == [{"until": "fetch"}]
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        real_status(load_config(config), until="nope")


def test_prepare_warns_when_url_prefix_is_empty(
    tmp_path: Path, example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(example.config.raw_folder, tmp_path / "raw")
    path = tmp_path / "c.toml"
    assert _run(capsys, "init", str(path), "--identifier", "p")[0] == 0
    small = ["--set", "prepare.montage_len=5", "--set", "prepare.num_x=1", "--set",
             "prepare.num_y=1", "--workers", "1"]
    code, _, err = _run(capsys, "prepare", str(path), *small)
    assert code == 0, err
    assert "url_prefix is empty" in err
    code, _, err = _run(capsys, "prepare", str(path), *small,
                        "--set", "prepare.url_prefix=https://host/m/")
    assert code == 0, err
    assert "url_prefix is empty" not in err

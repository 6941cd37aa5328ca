"""Tests of the ``cellcrowd`` command: every subcommand's happy path and its errors."""

from __future__ import annotations

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
from cellcrowd.appen import emulator as emulator_module
from cellcrowd.cli import main
from cellcrowd.config import Config, load_config
from cellcrowd.demo import Example, ExampleSettings, emulated_job, make_example, save_config
from cellcrowd.pipeline import STAGES, working_folder

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

    def serve_once(*args: Any, **kwargs: Any) -> None:
        real(*args, stop=stop, **kwargs)

    monkeypatch.setattr(emulator_module, "serve_forever", serve_once)
    code, out, err = _run(capsys, "emulator", "serve", str(example.config.base),
                          "--identifier", "demo", "--job-id", "3")
    assert code == 0, err
    assert "serving job 3 of" in out
    assert "http://127.0.0.1:" in out
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

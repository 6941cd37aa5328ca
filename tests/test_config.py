"""Tests of cellcrowd.config: the TOML file, its validation, overrides and the API-key rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cellcrowd.config import (
    Config,
    ConfigError,
    example_config,
    load_config,
    parse_value,
    write_example_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _write(folder: Path, text: str, name: str = "cc.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = 'identifier = "exp"\njob_id = 7\n'


def test_init_example_loads_back_with_every_section(tmp_path: Path) -> None:
    path = write_example_config(tmp_path / "c.toml", identifier="abc", job_id=12)
    text = path.read_text()
    data = tomllib.loads(text)
    assert set(data) >= {"base", "identifier", "job_id", "service", "clean", "outputs", "npz",
                         "executor", "prepare"}
    assert "#" in text  # commented
    cfg = load_config(path)
    assert (cfg.identifier, cfg.job_id, cfg.base) == ("abc", 12, tmp_path)
    assert cfg.source == path
    # Every key the model knows is in the example, so the example documents them all.
    for section in ("service", "clean", "outputs", "npz", "executor", "prepare"):
        assert set(data[section]) == set(type(getattr(cfg, section)).model_fields), section


def test_write_example_into_folder_and_refuse_overwrite(tmp_path: Path) -> None:
    path = write_example_config(tmp_path)
    assert path == tmp_path / "cellcrowd.toml"
    with pytest.raises(ConfigError, match="file exists"):
        write_example_config(path)
    assert write_example_config(path, overwrite=True, job_id=3) == path
    assert load_config(path).job_id == 3


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    sub = tmp_path / "cfg"
    sub.mkdir()
    path = _write(sub, MINIMAL + 'base = "../work"\nraw = "frames"\n')
    cfg = load_config(path)
    assert cfg.base == sub / "../work"
    assert cfg.raw == sub / "frames"
    assert cfg.raw_folder == sub / "frames"
    wf = cfg.working_folder()
    assert (wf.base, wf.identifier, wf.raw) == (cfg.base, "exp", sub / "frames")
    # defaults
    assert cfg.clean.min_size == 10
    assert cfg.clean.max_hole == 64
    assert cfg.clean.encoding == "auto"
    assert cfg.service.api_version == "v1"
    assert cfg.service.report_type == "full"
    assert cfg.executor.workers == 0  # a local process pool, one worker per CPU
    assert cfg.executor.scheduler == ""


def test_base_defaults_to_the_file_folder_and_absolute_paths_stay(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL + f'raw = "{(tmp_path / "r").as_posix()}"\n'))
    assert cfg.base == tmp_path
    assert cfg.raw == tmp_path / "r"
    assert load_config(_write(tmp_path, MINIMAL)).raw_folder == tmp_path / "raw"


def test_overrides_replace_file_values_and_are_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "[clean]\nmin_size = 5\n")
    cfg = load_config(path, {"clean.min_size": 30, "executor.workers": 2,
                             "executor.scheduler": None})
    assert cfg.clean.min_size == 30
    assert cfg.executor.workers == 2
    assert cfg.with_overrides({"clean.max_hole": 3}).clean.max_hole == 3
    assert cfg.with_overrides({"clean.max_hole": 3}).clean.min_size == 30
    with pytest.raises(ConfigError, match=r"clean\.min_size.*greater than or equal to 0"):
        load_config(path, {"clean.min_size": -1})
    with pytest.raises(ConfigError, match="unknown key 'workrs' in \\[executor\\]"):
        cfg.with_overrides({"executor.workrs": 3})
    with pytest.raises(ConfigError, match="'min_size' is not a section"):
        load_config(path, {"clean.min_size.deep": 1})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param(MINIMAL + "colour = 1\n",
                     r"unknown key 'colour' at the top level; allowed keys are: base, "
                     r"identifier, job_id, raw, clean", id="top-level"),
        pytest.param(MINIMAL + "[clean]\nmin_sise = 3\n",
                     r"clean\.min_sise.*unknown key 'min_sise' in \[clean\]; allowed keys are: "
                     r"min_size, max_hole, encoding", id="section"),
        pytest.param(MINIMAL + "[cleaning]\nmin_size = 3\n", r"unknown key 'cleaning'",
                     id="unknown-section"),
        pytest.param('job_id = 7\n', r"required key 'identifier' is missing", id="missing"),
        pytest.param(MINIMAL + '[clean]\nencoding = "blue"\n', r"clean\.encoding.*'blue'",
                     id="bad-literal"),
        pytest.param(MINIMAL + '[service]\napi_version = "v2"\n', r"api_version",
                     id="bad-version"),
        pytest.param(MINIMAL + '[service]\nreport_type = "workset"\n', r"report_type",
                     id="report-without-judgments"),
        pytest.param(MINIMAL + '[executor]\nworkers = -1\n', r"executor\.workers",
                     id="negative-workers"),
        pytest.param('identifier = "a/b"\njob_id = 1\n', r"cannot be used in file names",
                     id="identifier-slash"),
        pytest.param(MINIMAL + "[outputs]\nstitched = false\n",
                     r"outputs\.trk is built from the stitched movie", id="trk-needs-stitch"),
        pytest.param(MINIMAL + "[outputs\n", r"not valid TOML", id="not-toml"),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('api_key = "s3cr3t-value"\n', id="top"),
        pytest.param('[service]\napi_key = "s3cr3t-value"\n', id="service"),
        pytest.param('[service]\nkey = "s3cr3t-value"\n', id="key"),
    ],
)
def test_api_key_in_file_is_refused_without_echoing_it(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, MINIMAL + text)
    with pytest.raises(ConfigError, match="environment variable CELLCROWD_API_KEY") as info:
        load_config(path)
    assert "s3cr3t-value" not in str(info.value)
    assert "s3cr3t-value" not in repr(info.value.args)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found: write one with `cellcrowd init`"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="this is a folder"):
        load_config(tmp_path)


def test_config_is_frozen_and_has_no_key_field() -> None:
    cfg = Config(base=Path("/x"), identifier="e", job_id=1)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.job_id = 2  # type: ignore[misc]
    assert "api_key" not in Config.model_fields
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Config(base=Path("/x"), identifier="e", job_id=1, api_key="k")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("text", "value"),
    [("12", 12), ("2.5", 2.5), ("false", False), ('"a b"', "a b"), ("[1, 2]", [1, 2]),
     ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"), ("plain", "plain")],
    ids=["int", "float", "bool", "quoted", "list", "url", "bare-word"],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_example_config_is_valid_toml_with_placeholders() -> None:
    data = tomllib.loads(example_config(base="some/where", identifier="x", job_id=5))
    assert (data["base"], data["identifier"], data["job_id"]) == ("some/where", "x", 5)
    assert data["service"]["api_url"].endswith("/v1")


def _messages() -> list[tuple[str, str]]:
    """Every string literal of the package (f-string parts included), with its file."""
    import ast

    import cellcrowd

    root = Path(cellcrowd.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((path.name, node.value))
    return found


def test_every_hint_names_a_setting_that_exists() -> None:
    import re

    sections = {name: set(field.annotation.model_fields)  # type: ignore[union-attr]
                for name, field in Config.model_fields.items()
                if hasattr(field.annotation, "model_fields")}
    named = 0
    for where, text in _messages():
        # "[service] poll_interval", "--set clean.min_size=20", "prepare.url_prefix=..."
        for section, key in re.findall(r"\[(\w+)\] (\w+)", text) + re.findall(
                rf"\b({'|'.join(sections)})\.(\w+)=", text):
            named += 1
            assert section in sections, (where, text)
            assert key in sections[section], (where, text)
        assert "max_retries)" not in text, (where, text)  # not a setting
    assert named >= 5

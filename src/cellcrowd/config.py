"""One validated configuration for a harvest: a TOML file, overridden by command-line flags.

The file names the working folder, the job and what to write; every key is
checked (unknown keys are errors that list the allowed ones) and relative paths
are resolved against the folder of the file. The API key never comes from the
file: it is read from the environment (``CELLCROWD_API_KEY``, ``APPEN_API_KEY``
or ``FIGURE_EIGHT_API_KEY``) or asked for at a terminal, and only when a stage
needs it (:func:`get_api_key`, from :mod:`cellcrowd.appen.client`).

A minimal file::

    identifier = "exp"
    job_id = 1363594

    [clean]
    min_size = 10

``cellcrowd init`` writes a commented example with every key (see
:func:`example_config`).

Examples
--------
>>> cfg = Config(base=Path("/data/exp"), identifier="exp", job_id=1)
>>> cfg.clean.min_size, cfg.service.report_type, cfg.raw_folder.as_posix()
(10, 'full', '/data/exp/raw')
>>> cfg.with_overrides({"clean.min_size": 25}).clean.min_size
25
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .appen.client import API_KEY_ENV_VARS, DEFAULT_API_URL, get_api_key
from .errors import ConfigError
from .files import atomic_write_text
from .layout import WorkingFolder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "API_KEY_VARIABLES",
    "DEFAULT_API_URL",
    "CleanConfig",
    "Config",
    "ExecutorConfig",
    "NpzConfig",
    "OutputsConfig",
    "PrepareConfig",
    "ServiceConfig",
    "example_config",
    "get_api_key",
    "load_config",
    "parse_value",
    "write_example_config",
]

#: Environment variables searched, in order, for the service's API key.
API_KEY_VARIABLES = API_KEY_ENV_VARS

Encoding = Literal["auto", "red", "rgb"]
ReportType = Literal["full", "aggregated", "json"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceConfig(_Section):
    """Where and how to reach the annotation service."""

    api_url: str = Field(default=DEFAULT_API_URL, min_length=1)
    api_version: Literal["v1", "v3"] = "v1"
    report_type: ReportType = "full"
    concurrency: int = Field(default=16, ge=1, le=256)
    poll_interval: float = Field(default=10.0, ge=0, le=600)
    #: Cap (seconds) on any wait the service asks for (``Retry-After`` on 202, 429, 5xx).
    max_wait: float = Field(default=300.0, ge=0, le=86400)
    #: Seconds one request may take, from connecting to the last byte of the answer.
    request_deadline: float = Field(default=600.0, gt=0, le=86400)
    #: Seconds of waiting for the report to be generated before giving up.
    report_deadline: float = Field(default=1800.0, gt=0, le=7 * 86400)
    #: Largest annotation (pixels) accepted when the montage size is unknown.
    max_pixels: int = Field(default=50_000_000, ge=1)
    #: Use a report whose montages carry another identifier than this configuration's.
    allow_other_identifier: bool = False


class CleanConfig(_Section):
    """How annotations are turned into clean label images."""

    min_size: int = Field(default=10, ge=0)
    max_hole: int = Field(default=64, ge=0)
    encoding: Encoding = "auto"
    #: Merge every usable judgment of a montage (False: only the one chosen by ``fetch``).
    consensus: bool = True
    #: How several judgments become one: "reliability" (job-wide worker reliability, then
    #: a reliability-weighted consensus), "vote" (each montage on its own, trust-weighted
    #: majority) or "latest" (only the judgment ``fetch`` chose, as the original tool;
    #: the same as ``consensus = false``).
    strategy: Literal["reliability", "vote", "latest"] = "reliability"
    #: Review (``cellcrowd review``) units whose annotators agree less than this (mean F1).
    min_agreement: float = Field(default=0.7, ge=0, le=1)
    #: Smallest IoU for two annotators' cells to be one cell, in (0, 1].
    min_iou: float = Field(default=0.5, gt=0, le=1)
    #: Share of the annotators' trust weight a cell (and each pixel) must exceed, in [0, 1).
    min_support: float = Field(default=0.5, ge=0, lt=1)


class OutputsConfig(_Section):
    """Which outputs to write."""

    npz_parts: bool = True
    npz_full_movie: bool = False
    stitched: bool = True
    trk: bool = True
    ctc: bool = True
    #: ``"auto"``: written when the ``cellcrowd[zarr]`` extra is installed.
    omezarr: bool | Literal["auto"] = "auto"
    geff: bool | Literal["auto"] = "auto"
    #: Also one GEFF per part.
    geff_parts: bool = False
    #: Folder or fsspec URL (``s3://bucket/prefix``) of the OME-Zarr and GEFF; "" = ``zarr/``.
    export_url: str = ""
    #: fsspec options for ``export_url`` (e.g. ``endpoint_url``; credentials come from the
    #: environment, never from here).
    export_storage_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    qc: bool = True

    def wants(self, name: Literal["omezarr", "geff"]) -> bool:
        """Whether the OME-Zarr or GEFF export is on (``"auto"``: the extra is installed)."""
        from .export.zarrstore import zarr_extra_installed

        value = getattr(self, name)
        return self.stitched and (zarr_extra_installed() if value == "auto" else bool(value))


class NpzConfig(_Section):
    """What goes into the ``.npz`` training data."""

    samples_to_drop: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()


class ExecutorConfig(_Section):
    """Where per-montage/per-tile tasks run: local processes or a dask scheduler."""

    workers: int = Field(default=0, ge=0, le=1024)
    scheduler: str = ""


class PrepareConfig(_Section):
    """How raw movies are cut into tiles and montages (``cellcrowd prepare`` only)."""

    num_x: int = Field(default=2, ge=1)
    num_y: int = Field(default=2, ge=1)
    overlap_perc: float = Field(default=10.0, ge=0, lt=100)
    montage_len: int = Field(default=10, ge=1)
    row_length: int = Field(default=5, ge=1)
    x_buffer: int = Field(default=0, ge=0)
    y_buffer: int = Field(default=0, ge=0)
    url_prefix: str = ""


class Config(_Section):
    """The whole configuration of one working folder and job.

    Attributes
    ----------
    base : Path
        The working folder (``base_dir`` in the notebook).
    raw : Path or None
        Folder of full-size raw frames; default ``base/raw``.
    identifier : str
        The identifier given when the montages were prepared.
    job_id : int
        The annotation job to harvest.
    source : Path or None
        The file this configuration was read from (set by :func:`load_config`).
    """

    base: Path
    identifier: str = Field(min_length=1)
    job_id: int = Field(ge=0)
    raw: Path | None = None
    service: ServiceConfig = ServiceConfig()
    clean: CleanConfig = CleanConfig()
    outputs: OutputsConfig = OutputsConfig()
    npz: NpzConfig = NpzConfig()
    executor: ExecutorConfig = ExecutorConfig()
    prepare: PrepareConfig = PrepareConfig()
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if "/" in self.identifier or "\\" in self.identifier:
            raise ValueError(
                f"identifier {self.identifier!r} cannot be used in file names: use letters, "
                "digits, '-' and '_'"
            )
        needs = [name for name in ("trk", "ctc", "omezarr", "geff")
                 if getattr(self.outputs, name) is True]
        if needs and not self.outputs.stitched:
            raise ValueError(
                f"outputs.{needs[0]} is built from the stitched movie: set outputs.stitched "
                f"= true, or outputs.{needs[0]} = false"
            )
        return self

    @property
    def raw_folder(self) -> Path:
        """The raw frames' folder (``raw``, or ``base/raw``)."""
        return self.raw if self.raw is not None else self.base / "raw"

    def working_folder(self) -> WorkingFolder:
        """The names of everything in the working folder."""
        return WorkingFolder(self.base, self.identifier, raw=self.raw_folder)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A new configuration with dotted keys (``"clean.min_size"``) replaced, validated."""
        data = self.model_dump(mode="python", exclude_none=True)
        _apply_overrides(data, overrides, self.source)
        return _validate(data, self.source)


def _flat_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        if name == "source":
            continue
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_flat_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def _allowed_in(section: str) -> list[str]:
    if not section:
        return [k.split(".")[0] for k in _flat_keys(Config) if "." not in k] + sorted(
            {k.split(".")[0] for k in _flat_keys(Config) if "." in k}
        )
    return [k.split(".", 1)[1] for k in _flat_keys(Config) if k.startswith(section + ".")]


def _find_api_key(data: Mapping[str, Any], prefix: str = "") -> str | None:
    for key, value in data.items():
        if key.lower().replace("-", "_") in ("api_key", "apikey", "key", "token"):
            return prefix + key
        if isinstance(value, Mapping):
            found = _find_api_key(value, f"{prefix}{key}.")
            if found:
                return found
    return None


def _apply_overrides(
    data: dict[str, Any], overrides: Mapping[str, Any], source: Path | None
) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        parts = dotted.split(".")
        target = data
        for part in parts[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{part!r} is not a section", path=source, key=dotted)
            target = nested
        target[parts[-1]] = value


def _validate(data: Mapping[str, Any], source: Path | None) -> Config:
    key = _find_api_key(data)
    if key is not None:
        raise ConfigError(
            "API keys are never read from the configuration file: delete this key and set "
            f"the environment variable {API_KEY_VARIABLES[0]} instead",
            path=source,
            key=key,
        )
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise _config_error(exc, source) from None


def _config_error(exc: ValidationError, source: Path | None) -> ConfigError:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    dotted = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        section = ".".join(loc[:-1])
        allowed = ", ".join(_allowed_in(section))
        where = f"in [{section}]" if section else "at the top level"
        return ConfigError(
            f"unknown key {loc[-1]!r} {where}; allowed keys are: {allowed}",
            path=source,
            key=dotted,
        )
    if first["type"] == "missing":
        return ConfigError(
            f"required key {dotted!r} is missing; add it to the file (see `cellcrowd init`)",
            path=source,
            key=dotted,
        )
    msg = first["msg"].removeprefix("Value error, ")
    if loc:
        return ConfigError(
            f"{msg} (got {first.get('input')!r})", path=source, key=dotted
        )
    return ConfigError(msg, path=source)


def _resolve_paths(data: dict[str, Any], root: Path) -> None:
    for key in ("base", "raw"):
        value = data.get(key)
        if isinstance(value, str):
            path = Path(value).expanduser()
            data[key] = path if path.is_absolute() else (root / path)


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, resolve and validate a configuration file.

    Parameters
    ----------
    path : str or Path
        A TOML file. ``base`` and ``raw`` are resolved against its folder; ``base``
        defaults to that folder.
    overrides : mapping, optional
        Dotted keys (``"executor.workers"``) and values that replace the file's
        (``None`` values are ignored), as given by command-line flags.

    Raises
    ------
    ConfigError
        The file is missing or not TOML, a key is unknown or has a bad value, or
        the file holds an API key.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            "configuration file not found: write one with `cellcrowd init`", path=path
        ) from None
    except IsADirectoryError:
        raise ConfigError("this is a folder, not a configuration file", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", path=path) from None
    root = path.resolve().parent
    data.setdefault("base", ".")
    _apply_overrides(data, overrides or {}, path)
    _resolve_paths(data, root)
    return _validate(data, path)


def parse_value(text: str) -> Any:
    """A flag's value as TOML (``20``, ``true``, ``[1, 2]``, ``"x"``), else the plain text.

    >>> parse_value("20"), parse_value("true"), parse_value("[1, 2]"), parse_value("tcp://h:1")
    (20, True, [1, 2], 'tcp://h:1')
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_EXAMPLE = '''\
# cellcrowd configuration (TOML). Relative paths are relative to this file's folder.
# The API key is NOT read from this file: set the environment variable
# CELLCROWD_API_KEY (or APPEN_API_KEY / FIGURE_EIGHT_API_KEY), or be asked for it.

# The working folder (base_dir in the notebook): json_logs/, CSV/, movies/, npz/ ...
base = "{base}"
# Full-size raw frames (natural sort = frame order); default: <base>/raw
# raw = "{base}/raw"
# The identifier given when the montages were prepared (also in the job report).
identifier = "{identifier}"
# The annotation job to harvest.
job_id = {job_id}

[service]
api_url = "{api_url}"  # v1 base URL; EU tenant: https://api.eu.appen.com/v1
api_version = "v1"          # "v1" (jobs/{{id}}.csv) or "v3" (jobs/download.csv)
report_type = "full"        # full (every judgment), aggregated (one per unit), or json
concurrency = 16            # annotation images downloaded at once
poll_interval = 10.0        # seconds between asks while the report is being generated
max_wait = 300.0            # cap on any wait the service asks for (Retry-After), seconds
request_deadline = 600.0    # seconds one request may take, connecting to last byte
report_deadline = 1800.0    # seconds to wait for the report to be generated
max_pixels = 50000000       # largest annotation (pixels) when the montage size is unknown
allow_other_identifier = false  # use a report of montages with another identifier

[clean]
min_size = 10               # drop label fragments smaller than this (pixels)
max_hole = 64               # fill holes inside a cell up to this size (pixels)
encoding = "auto"           # how ids are painted: "red" channel, distinct "rgb", or "auto"
consensus = true            # merge all judgments of a montage (false: only the best one)
strategy = "reliability"    # "reliability" (job-wide worker reliability, then a weighted
                            # consensus), "vote" (trust-weighted majority per montage), or
                            # "latest" (only the judgment fetch chose, as consensus = false)
min_iou = 0.5               # consensus: IoU for two annotators' cells to be one cell (0, 1]
min_support = 0.5           # consensus: keep a cell (a pixel) when annotators holding more
                            # than this share of the weight drew it [0, 1)
min_agreement = 0.7         # cellcrowd review: re-judge units whose annotators agree less
                            # (mean F1 with the consensus) [0, 1]

[outputs]
npz_parts = true            # npz/<identifier>_partN.npz, one per montage number
npz_full_movie = false      # npz/<identifier>_full_movie.npz: all parts of each position,
                            # cells linked across parts (and, with stitched,
                            # npz/<identifier>_stitched_movie.npz: the stitched movie)
stitched = true             # stitched/: full-size frames with cells linked across tiles/parts
trk = true                  # trk/<identifier>.trk (DeepCell tracking), needs stitched
ctc = true                  # ctc/ (Cell Tracking Challenge folders), needs stitched
omezarr = "auto"            # zarr/<identifier>.ome.zarr (image + tracked labels), needs
                            # stitched; "auto": when "cellcrowd[zarr]" is installed
geff = "auto"               # zarr/<identifier>.geff (lineage graph), needs stitched
geff_parts = false          # also zarr/<identifier>_partN.geff, one per part
export_url = ""             # folder or URL (s3://bucket/prefix) for the two above; "" = zarr/
export_storage_options = {{}} # fsspec options for export_url, e.g. {{endpoint_url = "..."}}
qc = true                   # qc/index.html: the quality-control report (numbers, overlays)

[npz]
samples_to_drop = []        # positions to leave out, e.g. ["x_00_y_01"]
channels = []               # raw channel indices to keep, e.g. [0, 2]; [] = every channel

[executor]
workers = 0                 # local worker processes (0 = one per CPU, up to 8; 1 = serial)
scheduler = ""              # dask scheduler address, e.g. "tcp://10.0.0.5:8786" (wins over workers)

[prepare]                   # only for `cellcrowd prepare` (cutting raw movies into montages)
num_x = 2                   # tiles across
num_y = 2                   # tiles down
overlap_perc = 10.0         # overlap of neighbouring tiles, percent of a tile's core
montage_len = 10            # frames per montage
row_length = 5              # frames per montage row
x_buffer = 0
y_buffer = 0
url_prefix = ""             # where the montages will be hosted (prefix of image_url)
'''


def example_config(
    *, base: str = ".", identifier: str = "my_experiment", job_id: int = 0
) -> str:
    """A commented example configuration with every key (valid TOML).

    >>> import tomllib
    >>> tomllib.loads(example_config())["clean"]["min_size"]
    10
    """
    return _EXAMPLE.format(
        base=base.replace("\\", "/"), identifier=identifier, job_id=job_id,
        api_url=DEFAULT_API_URL,
    )


def write_example_config(path: str | Path, *, overwrite: bool = False, **values: Any) -> Path:
    """Write :func:`example_config` to ``path`` (atomic; refuses to overwrite by default)."""
    path = Path(path)
    if path.is_dir():
        path = path / "cellcrowd.toml"
    if path.exists() and not overwrite:
        raise ConfigError(
            "file exists: choose another name, or overwrite it with `cellcrowd init "
            f"{path} --force` (overwrite=True from Python)", path=path
        )
    atomic_write_text(path, example_config(**values))
    return path

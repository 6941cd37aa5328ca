"""The ``cellcrowd`` command: parses arguments and calls the library.

::

    cellcrowd demo [--keep DIR]              synthetic movie -> emulated job -> every output
    cellcrowd init [PATH]                    write a commented example configuration
    cellcrowd run CONFIG [--from S] [--until S] [--force S] [--workers N] [--scheduler ADDR]
    cellcrowd status CONFIG                  what is done, what is left, what was skipped
    cellcrowd prepare CONFIG                 raw movie -> montages, logs, upload CSV
    cellcrowd report|fetch|clean|movies|npz|stitch|qc CONFIG    one stage
    cellcrowd export trk|ctc|omezarr|geff CONFIG [--to URL]    one export
    cellcrowd emulator serve FOLDER          the emulated annotation service, for a prepared folder
    cellcrowd watch CONFIG [--listen H:P]    follow a running job until it completes (cli_live.py)
    cellcrowd resend CONFIG [--dry-run]      send units needing another judgment back to the job

``-v`` shows what the library logs (``-vv`` debug), ``-q`` prints nothing but
errors. Errors of cellcrowd print one line and exit with code 2. The console, progress
bars and tables are drawn by :mod:`cellcrowd.cli_output`; the work is the library's.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, cli_live
from .appen.client import API_URL_ENV, api_url_from_env
from .cli_output import RichProgress, Ui, logging_to, show_status, show_summary
from .config import (
    API_KEY_VARIABLES,
    Config,
    get_api_key,
    load_config,
    parse_value,
    write_example_config,
)
from .errors import CellcrowdError, ConfigError, redact
from .files import describe_os_error

__all__ = ["build_parser", "main"]

logger = logging.getLogger("cellcrowd.cli")

_STAGE_COMMANDS = ("report", "fetch", "clean", "movies", "npz", "stitch", "qc")
_EXPORTS = ("trk", "ctc", "omezarr", "geff")


# -- argument parsing ------------------------------------------------------------------------


def _add_config(p: argparse.ArgumentParser, *, executor: bool = True) -> None:
    p.add_argument("config", type=Path, help="configuration file (TOML; see `cellcrowd init`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value, e.g. --set clean.min_size=20")
    p.add_argument("--api-url", default=None, metavar="URL",
                   help=f"the service's base URL (before ${API_URL_ENV}, the file's "
                        "service.api_url and the default)")
    if executor:
        p.add_argument("--workers", type=int, default=None, metavar="N",
                       help="local worker processes (default: the configuration's)")
        p.add_argument("--scheduler", default=None, metavar="ADDR",
                       help="dask scheduler address, e.g. tcp://10.0.0.5:8786")


class _Subparsers:
    """``add_parser`` that gives every subcommand the common options."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(
            name, parents=[self.common], **kwargs)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellcrowd",
        description="Harvest crowd annotations of microscopy montages into training and "
                    "tracking data.",
    )
    parser.add_argument("--version", action="version", version=f"cellcrowd {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="count", default=0,
                      help="show progress messages (-vv: debug)")
    loud.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    # -v/-q are also accepted after the command (`cellcrowd run x.toml -q`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
                      common)
    _add_setup_parsers(sub)
    _add_pipeline_parsers(sub)
    _add_emulator_parser(sub)
    cli_live.add_parsers(sub, _add_config)
    return parser


def _add_setup_parsers(sub: _Subparsers) -> None:
    """``demo`` and ``init``."""
    p = sub.add_parser("demo", help="run the whole pipeline on a synthetic example")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="work in DIR and keep it (default: a temporary folder)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes")

    p = sub.add_parser("init", help="write a commented example configuration")
    p.add_argument("path", nargs="?", type=Path, default=Path("cellcrowd.toml"),
                   help="file (or folder) to write (default: cellcrowd.toml)")
    p.add_argument("--identifier", default="my_experiment",
                   help="the identifier given when the montages were prepared "
                        "(default: my_experiment)")
    p.add_argument("--job-id", type=int, default=0, help="the service's job id (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def _add_pipeline_parsers(sub: _Subparsers) -> None:
    """``run``, ``status``, ``review``, ``prepare``, one stage each, ``export``."""
    p = sub.add_parser("run", help="run every stage that is not up to date")
    _add_config(p)
    p.add_argument("--from", dest="from_stage", default=None, metavar="STAGE",
                   help="start at this stage")
    p.add_argument("--until", dest="until_stage", default=None, metavar="STAGE",
                   help="stop after this stage")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo this stage even if it is up to date (repeatable)")

    p = sub.add_parser("status", help="show what is done, left, stale, failed or skipped")
    _add_config(p, executor=False)

    p = sub.add_parser("review", help="write the CSV of units to judge again (low agreement, "
                       "broken, failed), ready to upload")
    _add_config(p, executor=False)

    p = sub.add_parser("prepare", help="cut the raw movie into montages for upload")
    _add_config(p)

    for name in _STAGE_COMMANDS:
        p = sub.add_parser(name, help=f"run the {name} stage only")
        _add_config(p)
        p.add_argument("--force", action="store_true", help="redo it even if up to date")

    p = sub.add_parser("export", help="write an export of the stitched movie")
    exp = _Subparsers(p.add_subparsers(dest="export", required=True, metavar="FORMAT"),
                      sub.common)
    for name in _EXPORTS:
        q = exp.add_parser(name, help=f"write the {name} export")
        _add_config(q)
        q.add_argument("--force", action="store_true", help="redo it even if up to date")
        if name in ("omezarr", "geff"):
            q.add_argument("--to", dest="export_url", default=None, metavar="URL",
                           help="folder or fsspec URL (s3://bucket/prefix) to write to "
                                "(default: [outputs] export_url, else zarr/)")


def _add_emulator_parser(sub: _Subparsers) -> None:
    """``emulator serve``."""
    p = sub.add_parser("emulator", help="the emulated annotation service")
    emu = _Subparsers(p.add_subparsers(dest="emulator", required=True, metavar="ACTION"),
                      sub.common)
    q = emu.add_parser("serve", help="serve a prepared working folder as a job")
    q.add_argument("folder", type=Path, help="working folder made by `cellcrowd prepare`")
    q.add_argument("--identifier", required=True,
                   help="the identifier given to `cellcrowd prepare`")
    q.add_argument("--job-id", type=int, default=1, help="the job id to serve (default: 1)")
    q.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    q.add_argument("--seed", type=int, default=0, help="seed of the simulated crowd")
    paint = q.add_mutually_exclusive_group()
    paint.add_argument("--labels", type=Path, default=None, metavar="DIR",
                       help="the crowd paints from this label movie: one full-size integer "
                            "label frame per raw frame (e.g. a segmentation model's output)")
    paint.add_argument("--annotations", type=Path, default=None, metavar="DIR",
                       help="serve the {montage}_annotation.png files of an earlier job "
                            "(default: paint the folder's truth/ montages, synthetic data)")
    q.add_argument("--live", type=float, default=None, metavar="SECONDS",
                   help="serve the job still running: units complete over about SECONDS, "
                        "in a random (seeded) order (to try `cellcrowd watch`)")
    q.add_argument("--webhook", default=None, metavar="URL",
                   help="with --live, POST signed webhooks here as units complete (e.g. "
                        "the URL `cellcrowd watch --listen` prints)")
    q.add_argument("--webhook-token-env", default="CELLCROWD_WEBHOOK_TOKEN", metavar="VAR",
                   help="environment variable holding the token that signs the webhooks "
                        "(default CELLCROWD_WEBHOOK_TOKEN, as for `watch --listen`)")


# -- helpers ---------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. clean.min_size=20")
        overrides[key.strip()] = parse_value(value.strip())
    # The service URL: --api-url, else $CELLCROWD_API_URL, else the file, else the default.
    if args.api_url:
        overrides["service.api_url"] = args.api_url
    elif os.environ.get(API_URL_ENV, "").strip():
        overrides["service.api_url"] = api_url_from_env()
    if getattr(args, "workers", None) is not None:
        overrides["executor.workers"] = args.workers
    if getattr(args, "scheduler", None) is not None:
        overrides["executor.scheduler"] = args.scheduler
    if getattr(args, "export", None) in ("omezarr", "geff"):
        overrides[f"outputs.{args.export}"] = True  # asked for: an install hint if missing
        if args.export_url is not None:
            overrides["outputs.export_url"] = args.export_url
    return load_config(args.config, overrides)


def _api_key() -> str:
    return get_api_key(prompt=True)


_SERVICE_STAGES = ("report", "fetch")


def _key_first(config: Config, from_stage: str | None, until_stage: str | None,
               force: Sequence[str]) -> Callable[[], str]:
    """Ask for the API key now, before any progress bar, when a service stage will run.

    A prompt drawn under a progress bar is erased by it and looks like a hang; without a
    terminal :func:`get_api_key` fails at once naming the variables to set. When no
    service stage will run (or the range is invalid: ``run`` says why) the key is asked
    for only if a stage turns out to need it.
    """
    from .pipeline import STAGES, status

    if any(os.environ.get(name, "").strip() for name in API_KEY_VARIABLES):
        return _api_key
    try:
        lo = STAGES.index(from_stage) if from_stage else 0
        hi = STAGES.index(until_stage) if until_stage else len(STAGES) - 1
    except ValueError:
        return _api_key
    wanted = set(STAGES[lo:hi + 1]) & set(_SERVICE_STAGES)
    if not wanted:  # (no status: it hashes every output of the stages it looks at)
        return _api_key
    if not wanted & set(force):
        left = status(config, until=max(wanted, key=STAGES.index)).left
        if not wanted & set(left):
            return _api_key
    key = _api_key()
    return lambda: key


def _secrets() -> list[str]:
    return [os.environ.get(name, "") for name in API_KEY_VARIABLES]


# -- commands --------------------------------------------------------------------------------


def _run_pipeline(args: argparse.Namespace, ui: Ui, *, from_stage: str | None,
                  until_stage: str | None, force: Sequence[str]) -> int:
    from .pipeline import run

    config = _load(args)
    api_key = _key_first(config, from_stage, until_stage, force)
    if ui.quiet:
        summary = run(config, from_stage=from_stage, until_stage=until_stage, force=force,
                      api_key=api_key)
    else:
        with RichProgress(ui.err) as bars:
            summary = run(config, from_stage=from_stage, until_stage=until_stage,
                          force=force, progress=bars, api_key=api_key)
    show_summary(ui, summary)
    return 0


def _cmd_run(args: argparse.Namespace, ui: Ui) -> int:
    return _run_pipeline(args, ui, from_stage=args.from_stage, until_stage=args.until_stage,
                         force=args.force)


def _cmd_stage(args: argparse.Namespace, ui: Ui) -> int:
    stage = args.export if args.command == "export" else args.command
    return _run_pipeline(args, ui, from_stage=stage, until_stage=stage,
                         force=[stage] if args.force else [])


def _cmd_status(args: argparse.Namespace, ui: Ui) -> int:
    from .pipeline import status

    show_status(ui, status(_load(args)))
    return 0


def _cmd_review(args: argparse.Namespace, ui: Ui) -> int:
    from .pipeline import working_folder
    from .review import write_review_csv

    cfg = _load(args)
    path, items = write_review_csv(working_folder(cfg), cfg.job_id,
                                   report_type=cfg.service.report_type,
                                   min_agreement=cfg.clean.min_agreement)
    for item in items:
        ui.print(f"{item.montage}: {item.reason}")
    if items:
        ui.print(f"wrote {path}: {len(items)} unit(s) to upload again for another judgment")
    else:
        ui.print("nothing to review: every unit was judged, cleaned and agreed on")
    return 0


def _cmd_init(args: argparse.Namespace, ui: Ui) -> int:
    path = write_example_config(args.path, overwrite=args.force, identifier=args.identifier,
                                job_id=args.job_id)
    ui.print(f"wrote {path}: edit it, then `cellcrowd run {path}`")
    return 0


def _cmd_prepare(args: argparse.Namespace, ui: Ui) -> int:
    from .executor import make_executor
    from .pipeline import prepare_folder
    from .prepare import planned_montages

    config = _load(args)
    if not config.prepare.url_prefix:
        logger.warning(
            "url_prefix is empty: the upload CSV lists bare file names, which the annotation "
            "service cannot open; set [prepare] url_prefix in %s (or --set "
            "prepare.url_prefix=...) to the address the montages will be hosted at, ending "
            "in '/'", args.config)
    ex = make_executor(config.executor.workers or None, config.executor.scheduler or None)
    try:
        if ui.quiet:
            result = prepare_folder(config, executor=ex)
        else:
            with RichProgress(ui.err) as bars:
                p = config.prepare
                bars.start("prepare", planned_montages(
                    config.raw_folder, num_x=p.num_x, num_y=p.num_y, montage_len=p.montage_len))
                result = prepare_folder(
                    config, executor=ex, progress=lambda n: bars.advance("prepare", n))
    finally:
        ex.close()
    ui.print(f"prepared {len(result.montages)} montages of {result.num_frames} frames in "
             f"{result.wf.montages}; upload {result.wf.upload_csv}")
    for error in result.errors:
        ui.print(f"  not written: {error}")
    return 0


def _cmd_demo(args: argparse.Namespace, ui: Ui) -> int:
    from .sim.demo import run_demo

    if ui.quiet:
        result = run_demo(args.keep, workers=args.workers)
    else:
        with RichProgress(ui.err) as bars:
            result = run_demo(args.keep, workers=args.workers, progress=bars)
    # The QC report's path is shown only when the folder is kept (else it is deleted).
    show_summary(ui, result.summary, title="cellcrowd demo", show_qc=result.kept)
    if result.kept:
        ui.print(f"outputs are in {result.folder}")
    else:
        ui.print("the demo folder was temporary and is deleted: use --keep DIR to keep it")
    return 0


def _cmd_emulator(args: argparse.Namespace, ui: Ui) -> int:
    from .layout import WorkingFolder
    from .sim.emulator import serve_forever
    from .sim.serve_folder import folder_job, live_job, served_counts

    if args.webhook is not None and args.live is None:
        raise ConfigError("--webhook needs --live SECONDS (a finished job sends no webhooks)")
    if args.live is not None and args.live <= 0:
        raise ConfigError(f"--live needs a positive number of seconds, not {args.live}")
    token = os.environ.get(args.webhook_token_env, "").strip()
    if args.webhook is not None and not token:
        raise ConfigError(f"--webhook needs the webhook token in ${args.webhook_token_env}")
    key = get_api_key(prompt=True)
    wf = WorkingFolder(args.folder, args.identifier)
    job: Any = (folder_job(wf, job_id=args.job_id, seed=args.seed, labels=args.labels,
                           annotations=args.annotations)
                if args.labels or args.annotations or args.live else None)
    if args.live is not None:
        job = live_job(job, seconds=args.live, seed=args.seed, webhook_url=args.webhook,
                       webhook_token=token)

    def ready(emulator: Any) -> None:
        running = f", units completing over {args.live:g} s" if args.live else ""
        hooks = f", webhooks to {args.webhook}" if args.webhook else ""
        ui.print(f"serving job {args.job_id} of {args.folder} at {emulator.url}{running}"
                 f"{hooks} (Ctrl-C stops); clients use the API key in "
                 f"${API_KEY_VARIABLES[0]}", soft_wrap=True)

    emulator = serve_forever(args.folder, args.identifier, job_id=args.job_id, api_key=key,
                             port=args.port, seed=args.seed, ready=ready, job=job)
    served = served_counts(emulator)
    ui.print("served {requests} requests, {annotations} annotations ({distinct_annotations} "
             "distinct), webhooks: {webhooks_delivered} delivered, {webhooks_duplicated} "
             "duplicated, {webhooks_given_up} given up".format(**served), soft_wrap=True)
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Ui], int]] = {
    "demo": _cmd_demo,
    "init": _cmd_init,
    "run": _cmd_run,
    "status": _cmd_status,
    "review": _cmd_review,
    "prepare": _cmd_prepare,
    "export": _cmd_stage,
    "emulator": _cmd_emulator,
    **dict.fromkeys(_STAGE_COMMANDS, _cmd_stage),
    **cli_live.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cellcrowd`` command; returns the exit code (0 ok, 2 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    ui = Ui(args.quiet)
    try:
        with logging_to(ui.err, args.verbose, args.quiet):
            return _COMMANDS[args.command](args, ui)
    except CellcrowdError as exc:
        ui.err.print(f"cellcrowd: error: {redact(str(exc), *_secrets())}", markup=False,
                     soft_wrap=True)
        return 2
    except ImportError as exc:
        ui.err.print(f"cellcrowd: error: {exc}", markup=False, soft_wrap=True)
        return 2
    except OSError as exc:
        ui.err.print(f"cellcrowd: error: {redact(describe_os_error(exc), *_secrets())}",
                     markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        ui.err.print("cellcrowd: interrupted; run the same command again to resume",
                     markup=False)
        return 130

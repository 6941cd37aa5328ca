"""The ``watch`` and ``resend`` commands of ``cellcrowd`` (parsing and printing only).

::

    cellcrowd watch CONFIG [--interval S] [--listen HOST:PORT [--path /hook]] [--resend]
    cellcrowd resend CONFIG [--dry-run] [--min-agreement F]

The work is done by :mod:`cellcrowd.watch`, :mod:`cellcrowd.webhook` and
:mod:`cellcrowd.resend`; :mod:`cellcrowd.cli` registers these commands.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["COMMANDS", "add_parsers", "describe_round"]


def add_parsers(sub: Any, add_config: Callable[..., None]) -> None:
    """Add ``watch`` and ``resend`` to the ``cellcrowd`` subcommands."""
    p = sub.add_parser("watch", help="follow a running job, harvesting units as they finish")
    add_config(p)
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between status checks (default 60)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="also receive the service's webhooks here (token in "
                        "$CELLCROWD_WEBHOOK_TOKEN); polling stays the fallback")
    p.add_argument("--path", default="/hook", metavar="PATH",
                   help="URL path the webhooks arrive at (default /hook)")
    p.add_argument("--resend", action="store_true",
                   help="after each harvest, send units that need another judgment back")
    p.add_argument("--max-rounds", type=int, default=None, metavar="N",
                   help="stop after N rounds even if the job is not complete")

    p = sub.add_parser("resend", help="send units that need another judgment back to the job")
    add_config(p, executor=False)
    p.add_argument("--dry-run", action="store_true",
                   help="only write CSV/job_{id}_resend.csv; send nothing")
    p.add_argument("--min-agreement", type=float, default=None, metavar="F",
                   help="resend montages whose annotators agree less (mean F1, 0-1; "
                        "default [clean] min_agreement, as `cellcrowd review`)")


def _duration(seconds: float | None) -> str:
    """``about 2 min 5 s left`` style text.

    >>> _duration(125.2), _duration(None), _duration(0)
    ('about 2 min 5 s left', 'time left unknown yet', 'done')
    """
    if seconds is None:
        return "time left unknown yet"
    if seconds <= 0:
        return "done"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = (f"{hours} h {minutes} min" if hours else
            f"{minutes} min {secs} s" if minutes else f"{secs} s")
    return f"about {text} left"


def describe_round(r: Any) -> str:
    """One progress line for a :class:`cellcrowd.watch.WatchRound`."""
    p = r.progress
    share = f" ({100 * p.units_done / p.units_total:.0f}%)" if p.units_total else ""
    text = (f"round {r.number}: units {p.units_done}/{p.units_total} done{share}, "
            f"{p.judgments} judgments, {_duration(r.seconds_left)}")
    if r.error:
        return f"{text}; failed, trying again: {r.error}"
    if r.summary is not None:
        from .watch import harvest_text

        return f"{text}; harvested ({harvest_text(r.summary)})"
    return text


def _cmd_watch(args: argparse.Namespace, ui: Any) -> int:
    from .cli import _api_key, _load
    from .cli_output import show_summary
    from .watch import watch
    from .webhook import listen_for_webhooks

    config = _load(args)
    wake = threading.Event()
    after = None
    if args.resend:
        from .resend import resend_units

        def after(summary: Any) -> None:
            result = resend_units(config, api_key=_api_key)
            if result.sent:
                ui.print(f"sent {len(result.rows)} unit(s) back to job {config.job_id}")

    with contextlib.ExitStack() as stack:
        if args.listen:
            receiver = stack.enter_context(listen_for_webhooks(
                config.working_folder(), args.listen, wake, path=args.path))
            ui.print(f"listening for webhooks at {receiver.url}")
        result = watch(config, api_key=_api_key, interval=args.interval, wake=wake,
                       on_round=lambda r: ui.print(describe_round(r)), after_harvest=after,
                       max_rounds=args.max_rounds)
    if result.summary is not None:
        show_summary(ui, result.summary, title="cellcrowd watch")
    ui.print(f"job {config.job_id} is complete" if result.complete else
             f"stopped after {result.rounds} rounds; the job is not complete: run the same "
             "command again to go on")
    return 0


def _cmd_resend(args: argparse.Namespace, ui: Any) -> int:
    from .cli import _api_key, _load
    from .resend import resend_units

    config = _load(args)
    result = resend_units(config, api_key=_api_key, dry_run=args.dry_run,
                          min_agreement=args.min_agreement)
    for row in result.rows:
        ui.print(f"  {row.montage}: {row.reason}")
    verb = "sent" if result.sent else "to send (dry run)" if args.dry_run else "to send"
    ui.print(f"{len(result.rows)} unit(s) {verb}, {result.already_sent} sent before; "
             f"rows in {result.csv}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "watch": _cmd_watch,
    "resend": _cmd_resend,
}

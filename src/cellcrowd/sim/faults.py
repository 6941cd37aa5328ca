"""Faults for the emulator: a broken transport, and hostile content.

:class:`Faults` breaks the *transport* (latency, 5xx, 429 bursts, cut bodies, dropped
connections), decided per request by :meth:`Faults.decide`; :class:`SeenRequest` is what
the emulator records of each request. The rest breaks the *content*, as an attacker or a
broken service would, for the reliability tests and ``docs/reliability.md``:

* :func:`bomb_png` a small file that decodes to a huge image (zlib-compressed zeros);
* :func:`damaged_png` a PNG that arrives complete (closing ``IEND``) but does not decode;
* :func:`hostile_rows` full-report rows with path-climbing ids, malformed values, bytes
  that are not UTF-8, and a conflicting duplicate, each with the reason cellcrowd must
  give; :func:`append_rows` adds them to a report's CSV bytes (serve the result with
  :meth:`Emulator.replace_report <cellcrowd.sim.emulator.Emulator.replace_report>`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Faults",
    "HostileRow",
    "SeenRequest",
    "append_rows",
    "bomb_png",
    "damaged_png",
    "hostile_rows",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



@dataclass(frozen=True)
class Faults:
    """Faults injected into the emulator's answers (all shares are per attempt).

    Parameters
    ----------
    latency : float
        Seconds added to every request.
    error_rate : float
        Share of attempts answered with a 500/502/503.
    burst_rate : float
        Share of paths whose first ``burst_len`` attempts get a 429.
    burst_len : int
        Length of a 429 burst.
    retry_after : int
        ``Retry-After`` seconds sent with a 429.
    truncate_rate : float
        Share of attempts whose body is cut in half (then the connection closes).
    drop_rate : float
        Share of attempts whose connection closes without an answer.
    max_faults_per_path : int
        Only the first attempts of a path can be faulted, so retries end.
    kinds : frozenset of str
        Which requests are faulted: ``report``, ``annotation``, ``status``, ``storage``.
    seed : int
        Seed of the fault decisions.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    burst_rate: float = 0.0
    burst_len: int = 2
    retry_after: int = 1
    truncate_rate: float = 0.0
    drop_rate: float = 0.0
    max_faults_per_path: int = 3
    kinds: frozenset[str] = frozenset({"report", "annotation", "status", "storage"})
    seed: int = 0

    def __post_init__(self) -> None:
        shares = self.error_rate + self.truncate_rate + self.drop_rate
        if min(self.error_rate, self.burst_rate, self.truncate_rate, self.drop_rate) < 0 or (
            shares > 1 or self.burst_rate > 1
        ):
            raise ValueError("fault shares must be >= 0 and error+truncate+drop at most 1")
        if self.latency < 0 or self.burst_len < 0 or self.max_faults_per_path < 0:
            raise ValueError("latency, burst_len and max_faults_per_path must be >= 0")

    def decide(self, path: str, attempt: int) -> str | None:
        """The fault for the ``attempt``-th (0-based) request of ``path``, if any.

        >>> Faults(error_rate=1.0).decide("/v1/jobs/1.csv", 0)
        '5xx'
        >>> Faults(error_rate=1.0, max_faults_per_path=1).decide("/v1/jobs/1.csv", 1) is None
        True
        """
        if attempt >= self.max_faults_per_path:
            return None
        if attempt < self.burst_len and self._uniform(path, "burst") < self.burst_rate:
            return "429"
        u = self._uniform(path, str(attempt))
        for name, share in (("5xx", self.error_rate), ("truncate", self.truncate_rate),
                            ("drop", self.drop_rate)):
            if u < share:
                return name
            u -= share
        return None

    def _uniform(self, path: str, salt: str) -> float:
        digest = hashlib.blake2b(f"{self.seed}|{path}|{salt}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") / 2**64


@dataclass(frozen=True)
class SeenRequest:
    """What one server saw of one request (headers with lower-case names)."""

    server: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit grey PNG of ``width`` x ``height`` zeros: tiny on disk, huge decoded.

    >>> len(bomb_png(20_000, 20_000)) < 200_000
    True
    """
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (_PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def damaged_png(png: bytes) -> bytes:
    """``png`` with its image data scrambled: complete (``IEND`` intact), undecodable.

    The first ``IDAT`` chunk's payload is replaced by bytes that are not zlib data, and
    its CRC is recomputed, so only decoding finds the damage.
    """
    at = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[at:at + 4])
    garbage = bytes((i * 37 + 11) % 256 for i in range(max(length, 16)))
    return png[:at] + _chunk(b"IDAT", garbage) + png[at + 12 + length:]


@dataclass(frozen=True)
class HostileRow:
    """A report row that must become a problem, and words its reason must contain."""

    name: str
    row: Mapping[str, str]
    reason: str
    encoding: str = "utf-8"


def hostile_rows(template: Mapping[str, str], annotation_url: str) -> list[HostileRow]:
    """Rows made from a good full-report ``template`` row, each broken in one way.

    ``annotation_url`` is a URL that serves a valid annotation, so only the broken value
    (never the download) can make the row fail. Judgment ids start at 9e9, away from the
    service's.
    """
    cell = json.dumps({"url": annotation_url})

    def row(jid: int, **changes: str) -> dict[str, str]:
        return {**template, "_id": str(jid), "annotation": cell, **changes}

    image = template["image_url"]
    return [
        HostileRow("climbing-id", row(0, _id="../../../sentinel/pwned"), "not an id"),
        HostileRow("climbing-unit", row(9_000_000_001, _unit_id="1/../../../../pwned"),
                   "not an id"),
        HostileRow("climbing-montage", row(9_000_000_002, image_url=image.rsplit("/", 1)[0]
                                           + "/..%2F..%2Fpwned.png"), "not a montage name"),
        HostileRow("bad-json", row(9_000_000_003, annotation='{"url": "http'), "not valid JSON"),
        HostileRow("bad-tainted", row(9_000_000_004, _tainted="perhaps"), "not a boolean"),
        HostileRow("bad-trust", row(9_000_000_005, _trust="very high"), "not a number"),
        HostileRow("latin-1", row(9_000_000_006, _city="Montr\u00e9al"), "not UTF-8",
                   encoding="latin-1"),
        HostileRow("duplicate-a", row(9_000_000_007, _trust="0.5"), "conflicting duplicate"),
        HostileRow("duplicate-b", row(9_000_000_007, _trust="0.9"), "conflicting duplicate"),
    ]


def append_rows(report: bytes, rows: Sequence[HostileRow]) -> bytes:
    """A full report's CSV bytes with ``rows`` appended (each in its own encoding)."""
    columns = next(csv.reader(io.StringIO(report.decode("utf-8-sig"))))
    out = [report if report.endswith(b"\n") else report + b"\n"]
    for item in rows:
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=columns, lineterminator="\n",
                       extrasaction="ignore").writerow(item.row)
        out.append(buf.getvalue().encode(item.encoding))
    return b"".join(out)

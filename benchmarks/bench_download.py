"""Annotation download throughput against the emulator with added latency.

Run: ``python benchmarks/bench_download.py`` (about 30 s). It serves a simulated job of
400 annotations (64x64 montages) on loopback with 50 ms added to every request, downloads
them all with the default concurrency and then one at a time, each into a fresh folder,
and prints annotations per second for both and their ratio. The emulator runs in its own
process, so its CPU time does not compete with the client's for the GIL.
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np

from cellcrowd.appen.client import AppenClient
from cellcrowd.appen.report import read_report
from cellcrowd.download import download_annotations
from cellcrowd.geometry import MontageLayout
from cellcrowd.layout import WorkingFolder
from cellcrowd.sim.crowd import CrowdConfig, SourceRow, simulate_crowd
from cellcrowd.sim.emulator import Emulator, Faults

JOB = 4242
KEY = "bench-key"
LAYOUT = MontageLayout((32, 32), length=4, row_length=2)


def truth(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(LAYOUT.montage_shape, np.uint16)
    for sl in LAYOUT.iter_slices():
        for cell in range(1, 4):
            y, x = rng.integers(2, 18, size=2)
            out[sl][y : y + 12, x : x + 12] = cell
    return out


def build_job(count: int):  # type: ignore[no-untyped-def]
    rows = [SourceRow("bench", f"bench_x_{i % 20:02d}_y_{i // 20 % 20:02d}_montage_"
                               f"{i // 400:02d}.png") for i in range(count)]
    truths = {r.image_url[:-4]: truth(i) for i, r in enumerate(rows)}
    config = CrowdConfig(workers_per_unit=(1, 1), broken_share=0.0, reupload=False)
    return simulate_crowd(rows, truths, job_id=JOB, layout=LAYOUT, config=config, seed=0)


def serve(count: int, latency: float, urls: Queue[str], stop: Event) -> None:
    """Child process: serve the job until ``stop`` is set."""
    with Emulator(build_job(count), api_key=KEY, faults=Faults(latency=latency),
                  report_polls=0) as emu:
        urls.put(emu.url)
        stop.wait()


def timed_download(url: str, base: Path, concurrency: int) -> tuple[int, float]:
    wf = WorkingFolder(base, "bench")
    with AppenClient(KEY, base_url=url, max_connections=max(concurrency, 1)) as client:
        report = read_report(client.download_report(JOB, wf.report_csv(JOB)))
        start = time.perf_counter()
        result = download_annotations(report, wf, job_id=JOB, client=client,
                                      concurrency=concurrency, expected_shape=(64, 64))
        elapsed = time.perf_counter() - start
    if result.failed or result.downloaded != len(report):
        raise SystemExit(f"download incomplete: {result.downloaded} of {len(report)}, "
                         f"{result.failed} failed")
    return result.downloaded, elapsed


def main() -> None:
    default = inspect.signature(download_annotations).parameters["concurrency"].default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=default)
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    urls: Queue[str] = ctx.Queue()
    stop = ctx.Event()
    server = ctx.Process(target=serve, args=(args.annotations, args.latency, urls, stop))
    server.start()
    rates = {}
    try:
        url = urls.get(timeout=120)
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in (args.concurrency, 1):
                count, seconds = timed_download(url, Path(tmp) / f"c{concurrency}", concurrency)
                rates[concurrency] = count / seconds
                print(f"concurrency={concurrency:>3}: {count} annotations in {seconds:6.2f} s"
                      f" = {rates[concurrency]:7.1f} annotations/s")
    finally:
        stop.set()
        server.join(timeout=30)
    print(f"speed-up of concurrency={args.concurrency} over one at a time: "
          f"{rates[args.concurrency] / rates[1]:.1f}x "
          f"(latency {args.latency * 1000:.0f} ms per request)")


if __name__ == "__main__":
    main()

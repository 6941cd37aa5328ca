"""cellcrowd's benchmark: one command, one table of medians and ratios from the same run.

Run from the repository root::

    python benchmarks/run.py                 # sections harvest sizes workers downloads prepare
    python benchmarks/run.py --quick         # a smoke run of small inputs (seconds)
    python benchmarks/run.py --memory        # also peak RSS per stage (heavy: 2048^2 x 200/400)
    python benchmarks/run.py --only harvest workers --repeats 5

Inputs are built deterministically in a temporary folder (``cellcrowd.sim.synthetic`` movies
with about 440 cells per megapixel, 4x4 tiles with 10% overlap, montages of 10 frames;
annotations served by the emulator and fetched before anything is timed) and removed at
the end. Sections (see benchmarks/README.md):

1. ``harvest``: clean + movies + npz of a 1024^2 x 60 movie (96 montages) through the
   library/notebook functions and through ``cellcrowd run``, against the original-style
   BASELINE and the I/O floor (harvest.py);
2. ``sizes``: the same at 512^2 x 20, 1024^2 x 60 and 2048^2 x 60: seconds per megapixel;
3. ``memory`` (``--memory`` only): peak RSS (the process and its workers) and time per
   stage of ``cellcrowd run`` with every output on, 2048^2 x 200 and x 400 frames;
4. ``workers``: ``cellcrowd run`` on 1 vs 2 local workers and on a dask LocalCluster of
   1 vs 2 workers, and the CPU the 2-worker dask runs spent in the tasks and in dask's
   own event loops (the workers' and the calling process's);
5. ``downloads``: 400 annotations at 50 ms latency, concurrent vs one at a time
   (bench_download.py's emulator);
6. ``prepare``: ``prepare`` against its own I/O floor.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harvest
from cellcrowd.config import OutputsConfig
from cellcrowd.executor import DaskExecutor, Executor, LocalExecutor
from cellcrowd.files import write_settings
from cellcrowd.geometry import TileGrid
from cellcrowd.layout import WorkingFolder
from cellcrowd.pipeline import STAGES
from cellcrowd.prepare import prepare
from harvest import Job, build_job, reset, timed

SECTIONS = ("harvest", "sizes", "memory", "workers", "downloads", "prepare")
SIZES = (((512, 512), 20), ((1024, 1024), 60), ((2048, 2048), 60))
QUICK_SIZES = (((256, 256), 10), ((384, 384), 10), ((512, 512), 10))


@dataclass
class Row:
    section: str
    what: str
    value: str
    ratio: str = ""
    target: str = ""


class Bench:
    """Holds the options, the temporary folder, the jobs built so far and the rows."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.rows: list[Row] = []
        self._jobs: dict[tuple[tuple[int, int], int], Job] = {}

    @property
    def sizes(self) -> tuple[tuple[tuple[int, int], int], ...]:
        return QUICK_SIZES if self.args.quick else SIZES

    def job(self, shape: tuple[int, int], frames: int) -> Job:
        key = (shape, frames)
        if key not in self._jobs:
            note(f"building the {shape[0]}x{shape[1]} x {frames}-frame job")
            self._jobs[key] = build_job(self.tmp / f"job{shape[0]}x{frames}", shape, frames)
        return self._jobs[key]

    def median(self, job: Job, fn: Callable[[], object], repeats: int | None = None) -> float:
        times = []
        for _ in range(repeats or self.args.repeats):
            settle(job)
            times.append(timed(fn))
        reset(job)
        return statistics.median(times)

    def interleaved(self, job: Job, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        """The median time of each of ``fns``, run in turn in every round (not all runs of
        one, then all of the next): the machine's drift during the section (page cache,
        disk writeback, other load) falls on all of them alike, not on the ratios."""
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(self.args.repeats):
            for name, fn in fns.items():
                settle(job)
                times[name].append(timed(fn))
        reset(job)
        return {name: statistics.median(t) for name, t in times.items()}

    def add(self, *cells: str) -> None:
        self.rows.append(Row(*cells))
        note(" | ".join(cells))  # as it comes, in case the run is stopped


def settle(job: Job) -> None:
    """Before a timed run: the harvest's outputs removed and everything written so far on
    disk (``os.sync``, untimed), so that no run pays for the writeback of the one before
    (the baseline and the floor never sync; cellcrowd syncs once per stage)."""
    reset(job)
    os.sync()


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def local(workers: int) -> Iterator[Executor]:
    executor = LocalExecutor(workers)
    try:
        list(executor.map(abs, [-1, -2]))  # start the pool outside the timings
        yield executor
    finally:
        executor.close()


@contextlib.contextmanager
def dask(workers: int, scratch: Path) -> Iterator[Executor]:
    """A ``LocalCluster`` of ``workers`` one-thread worker processes, its scheduler's and
    workers' scratch space in ``scratch`` (by default dask makes ``dask-scratch-space`` in
    the system's temporary folder and leaves it there)."""
    import dask
    from distributed import Client, LocalCluster

    # distributed sets its loggers' levels from its configuration when first imported
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with (dask.config.set({"temporary-directory": str(scratch)}),
          LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as cluster,
          Client(cluster) as client):
        client.wait_for_workers(workers, timeout=120)
        yield DaskExecutor(client=client)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by kind: ``tasks`` (a dask worker's
    task threads), ``loop`` (dask's event loop: a worker's main thread, the calling
    process's ``IO loop``) and ``other``."""
    import threading

    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    worker = any("Dask-Default-Threads" in name for name in names.values())
    cpu = {"tasks": 0.0, "loop": 0.0, "other": 0.0}
    for th in psutil.Process().threads():
        name = names.get(th.id, "")
        kind = ("tasks" if "Dask-Default-Threads" in name else "loop"
                if name == "IO loop" or (worker and name == "MainThread") else "other")
        cpu[kind] += th.user_time + th.system_time
    return cpu


def dask_cpu(client: Any) -> dict[str, float]:
    """:func:`thread_cpu` summed over the dask workers and the calling process."""
    total = {"tasks": 0.0, "loop": 0.0, "other": 0.0}
    for cpu in [*client.run(thread_cpu).values(), thread_cpu()]:
        for kind, seconds in cpu.items():
            total[kind] += seconds
    return total


def verdict(ratio: float, limit: float, at_least: bool) -> str:
    met = ratio >= limit if at_least else ratio <= limit
    return f"{'>=' if at_least else '<='} {limit:g}: {'met' if met else 'MISSED'}"


# -- sections ---------------------------------------------------------------------------------


def section_harvest(b: Bench) -> None:
    shape, frames = b.sizes[1]
    job = b.job(shape, frames)
    n = len(job.annotations())
    what = f"{n} montages, {shape[0]}^2 x {frames}"
    note(f"harvest: {what}")
    base = b.median(job, lambda: harvest.baseline(job), b.args.baseline_repeats)
    with local(2) as ex:
        results = b.interleaved(job, {
            "floor": lambda: harvest.io_floor(job),
            "library, serial": lambda: harvest.ours_library(job),
            "library, 2 local workers": lambda: harvest.ours_library(job, ex),
            "cellcrowd run, 2 local workers": lambda: harvest.ours_run(job, ex),
            "cellcrowd run, serial": lambda: harvest.ours_run(job)})
    floor = results.pop("floor")
    b.add("1 harvest", f"baseline (original style), {what}", f"{base:.2f} s", "1", "")
    b.add("1 harvest", "I/O floor (1 thread, zlib level 1)", f"{floor:.2f} s",
          f"{floor / base:.3f} of baseline")
    for name, t in results.items():
        b.add("1 harvest", f"ours: {name}", f"{t:.2f} s",
              f"{base / t:.1f}x faster than baseline", verdict(base / t, 10, True))
        b.add("1 harvest", f"ours: {name} / I/O floor", f"{t / floor:.2f}", "",
              verdict(t / floor, 1.5, False))


def section_sizes(b: Bench) -> None:
    per_mpx: dict[str, list[float]] = {"I/O floor": [], "library, serial": [],
                                      "cellcrowd run, 2 local workers": []}
    with local(2) as ex:
        for shape, frames in b.sizes:
            job = b.job(shape, frames)
            note(f"sizes: {shape[0]}^2 x {frames}")
            times = {"I/O floor": b.median(job, lambda j=job: harvest.io_floor(j)),
                     "library, serial": b.median(job, lambda j=job: harvest.ours_library(j)),
                     "cellcrowd run, 2 local workers": b.median(
                         job, lambda j=job: harvest.ours_run(j, ex))}
            for name, t in times.items():
                per_mpx[name].append(t / job.megapixels)
    labels = [f"{s[0]}^2x{f}" for s, f in b.sizes]
    for name, costs in per_mpx.items():
        values = ", ".join(f"{lab}: {c * 1000:.1f}" for lab, c in zip(labels, costs, strict=True))
        ratio = costs[-1] / costs[0]
        b.add("2 sizes", f"{name}, ms per megapixel", values,
              f"{labels[-1]}/{labels[0]} = {ratio:.2f}",
              verdict(ratio, 1.2, False) if name != "I/O floor" else "")


def section_workers(b: Bench) -> None:
    shape, frames = b.sizes[1]
    job = b.job(shape, frames)
    note("workers: cellcrowd run on 1 and 2 local workers, dask 1 and 2 workers")
    times: dict[tuple[str, int], float] = {}
    # Local: 1 and 2 workers in turn, round by round (an idle pool costs nothing). Dask: also
    # in turn, but one cluster at a time (an idle cluster's scheduler and workers take CPU
    # from the other): a new cluster each round, warmed up by one untimed run.
    with local(1) as one, local(2) as two:
        runs: dict[str, Callable[[], object]] = {
            "1": lambda: harvest.ours_run(job, one), "2": lambda: harvest.ours_run(job, two)}
        found = b.interleaved(job, runs)
    times["local", 1], times["local", 2] = found["1"], found["2"]
    dask_runs: dict[int, list[float]] = {1: [], 2: []}
    spent: list[dict[str, float]] = []  # CPU by kind in each 2-worker run
    for _ in range(b.args.repeats):
        for workers in (1, 2):
            with dask(workers, b.tmp / "dask") as ex:
                settle(job)
                harvest.ours_run(job, ex)  # the workers import and compile cellcrowd
                before = dask_cpu(ex.client)
                dask_runs[workers].append(
                    b.median(job, lambda ex=ex: harvest.ours_run(job, ex), repeats=1))
                if workers == 2:
                    after = dask_cpu(ex.client)
                    spent.append({k: after[k] - before[k] for k in after})
    for workers, seconds in dask_runs.items():
        times["dask", workers] = statistics.median(seconds)
    for kind, target in (("local", 1.7), ("dask", 1.6)):
        one, two = times[kind, 1], times[kind, 2]
        b.add("4 workers", f"cellcrowd run, {kind}: 1 worker / 2 workers",
              f"{one:.2f} s / {two:.2f} s", f"{one / two:.2f}x", verdict(one / two, target, True))
    cpu = {k: statistics.median(run[k] for run in spent) for k in ("tasks", "loop")}
    b.add("4 workers", "dask, 2 workers: CPU of the tasks / of dask's event loops",
          f"{cpu['tasks']:.2f} s / {cpu['loop']:.2f} s",
          f"loops: {cpu['loop'] / (2 * times['dask', 2]):.0%} of 2 cores' time")


def section_downloads(b: Bench) -> None:
    from bench_download import serve, timed_download
    from cellcrowd.download import download_annotations

    count = 40 if b.args.quick else 400
    many = inspect.signature(download_annotations).parameters["concurrency"].default
    note(f"downloads: {count} annotations at 50 ms")
    ctx = multiprocessing.get_context("spawn")
    urls = ctx.Queue()
    stop = ctx.Event()
    server = ctx.Process(target=serve, args=(count, 0.05, urls, stop))
    server.start()
    try:
        url = urls.get(timeout=120)
        runs: dict[int, list[float]] = {many: [], 1: []}
        for k in range(b.args.repeats):  # one at a time is latency-bound: once is enough
            for concurrency in (many, 1) if k == 0 else (many,):
                got, seconds = timed_download(url, b.tmp / f"dl{concurrency}_{k}", concurrency)
                runs[concurrency].append(got / seconds)
        rates = {c: statistics.median(r) for c, r in runs.items()}
        note(f"downloads: concurrency {many}: {', '.join(f'{r:.0f}' for r in runs[many])} per s")
    finally:
        stop.set()
        server.join(timeout=30)
    ratio = rates[many] / rates[1]
    b.add("5 downloads", f"{count} annotations, 50 ms latency: concurrency {many} "
          f"(median of {len(runs[many])}) / 1",
          f"{rates[many]:.0f} / {rates[1]:.0f} per s", f"{ratio:.1f}x", verdict(ratio, 20, True))


def section_prepare(b: Bench) -> None:
    shape, frames = b.sizes[1]
    job = b.job(shape, frames)
    note("prepare vs its I/O floor")
    raw = job.config.raw_folder
    runs = {"ours": [], "floor": []}
    for k in range(b.args.repeats):
        wf = WorkingFolder(b.tmp / f"prep{k}", "prep", raw=raw)
        runs["ours"].append(timed(lambda wf=wf: prepare(
            raw, wf, num_x=harvest.TILES, num_y=harvest.TILES, overlap_perc=harvest.OVERLAP,
            montage_len=harvest.MONTAGE_LEN, row_length=harvest.ROW_LENGTH)))
        runs["floor"].append(timed(lambda k=k: harvest.prepare_floor(
            raw, b.tmp / f"prepfloor{k}", shape)))
    ours, floor = (statistics.median(runs[k]) for k in ("ours", "floor"))
    b.add("6 prepare", f"prepare, serial / its I/O floor ({shape[0]}^2 x {frames})",
          f"{ours:.2f} s / {floor:.2f} s", f"{ours / floor:.2f}", verdict(ours / floor, 1.5, False))


# -- memory -----------------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def peak_rss(command: Sequence[str], interval: float = 0.05) -> tuple[float, int]:
    """Run ``command``; return its seconds and the peak RSS of it and its children."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(interval)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {proc.stderr.read().decode()[-2000:]}"
                         if proc.stderr else "failed")
    return seconds, peak


#: Peak RSS of building a memory job, per pixel of the movie (the simulator holds the movie:
#: its labels, raw frames and photon counts; 9.5 GB measured at 2048^2 x 200, 11.3 bytes).
BUILD_BYTES_PER_PIXEL = 12


def needed_stages(measured: Sequence[str]) -> list[str]:
    """The harvest stages (after fetch) that ``measured`` read, directly or not, and
    ``measured`` themselves, in run order: what the memory section runs.

    >>> needed_stages(["geff"])
    ['clean', 'movies', 'stitch', 'geff']
    """
    from cellcrowd.stages import HARVEST

    upstream = {stage.name: stage.upstream for stage in HARVEST.stages}
    needed, todo = set(measured), list(measured)
    while todo:
        for name in upstream[todo.pop()]:
            if name not in needed and name in STAGES[2:]:
                needed.add(name)
                todo.append(name)
    return [name for name in STAGES[2:] if name in needed]


def section_memory(b: Bench) -> None:
    import psutil

    size, lengths = b.args.memory_size, tuple(b.args.memory_frames)
    if b.args.quick:
        size, lengths = 512, (20, 40)
    shape = (size, size)
    measured = b.args.memory_stages or STAGES[2:]
    stages = needed_stages(measured)
    outputs = OutputsConfig(npz_parts=True, npz_full_movie=True, stitched=True, trk=True,
                            ctc=True, qc=True)
    grid = TileGrid.for_frame(shape, num_x=harvest.TILES, num_y=harvest.TILES,
                              overlap_perc=harvest.OVERLAP)
    part_bytes = (harvest.TILES**2 * harvest.MONTAGE_LEN * grid.tile_shape[0]
                  * grid.tile_shape[1] * 4)
    imports = ("import cellcrowd.pipeline, cellcrowd.labels, cellcrowd.stitch, cellcrowd.qc, "
               "cellcrowd.export.npz, cellcrowd.export.trk, cellcrowd.export.ctc, time; "
               "time.sleep(0.5)")
    idle = peak_rss([sys.executable, "-c", imports])[1]
    overhead = 3 * idle  # the main process and 2 workers with cellcrowd imported
    b.add("3 memory", "largest per-part array (X float32) / fixed overhead "
          "(3 x idle python with cellcrowd imported)",
          f"{part_bytes / 1e9:.3f} GB / {overhead / 1e9:.3f} GB")
    peaks: dict[str, list[int]] = {}
    for frames in lengths:
        need, free = BUILD_BYTES_PER_PIXEL * frames * size * size, psutil.virtual_memory().available
        if need > free:  # refuse up front rather than be killed by the kernel mid-build
            b.add("3 memory", f"{shape[0]}^2 x {frames}: not run",
                  f"its input needs about {need / 1e9:.0f} GB to build, "
                  f"{free / 1e9:.0f} GB available", "the simulator holds the whole movie",
                  "NOT RUN")
            continue
        note(f"memory: building {shape[0]}^2 x {frames}")
        job = build_job(b.tmp / f"mem{frames}", shape, frames, outputs=outputs)
        config = str(job.config.source)
        for stage in stages:
            command = [sys.executable, "-m", "cellcrowd", "-q", "run", config,
                       "--from", stage, "--until", stage, "--workers", "2"]
            if stage not in measured:  # an earlier stage the measured ones need: not timed
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                continue
            note(f"memory: {frames} frames, stage {stage}")
            seconds, peak = peak_rss(command)
            ratio = (peak - overhead) / part_bytes
            peaks.setdefault(stage, []).append(peak)
            b.add("3 memory", f"{shape[0]}^2 x {frames}: {stage}",
                  f"{seconds:.1f} s, peak {peak / 1e9:.3f} GB",
                  f"(peak - overhead) = {ratio:.2f} x part", verdict(ratio, 1.5, False))
    for stage, measured_peaks in peaks.items():  # memory independent of the movie's length
        if len(measured_peaks) < 2:
            continue
        short, long = measured_peaks[0], measured_peaks[-1]
        b.add("3 memory", f"{stage}: peak at {lengths[-1]} frames / at {lengths[0]}",
              f"{long / 1e9:.3f} GB / {short / 1e9:.3f} GB", f"{long / short:.3f}",
              verdict(long / short, 1.1, False))


# -- main -------------------------------------------------------------------------------------


def print_table(rows: Sequence[Row]) -> None:
    header = Row("section", "measurement", "median", "ratio", "target")
    cells = [[r.section, r.what, r.value, r.ratio, r.target] for r in [header, *rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print(line)
    print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs: a smoke run")
    parser.add_argument("--memory", action="store_true", help="also section 3 (heavy)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--repeats", type=int, default=None, help="runs per median (3; quick 1)")
    parser.add_argument("--baseline-repeats", type=int, default=None,
                        help="runs of the slow baseline (default --repeats)")
    parser.add_argument("--memory-size", type=int, default=2048, metavar="PX",
                        help="frame size of the memory section (default 2048)")
    parser.add_argument("--memory-frames", type=int, nargs="+", default=(200, 400),
                        metavar="T", help="movie lengths of the memory section (200 400; "
                        "the longest is compared with the shortest)")
    parser.add_argument("--memory-stages", nargs="+", choices=STAGES[2:], metavar="STAGE",
                        help="measure only these stages (the ones they read run first, "
                        "untimed); "
                        f"default all of {' '.join(STAGES[2:])}")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    chosen = args.only or [s for s in SECTIONS if s != "memory" or args.memory]
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("cellcrowd").setLevel(logging.ERROR)  # distributed's: in dask()
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cellcrowd-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        for name in SECTIONS:
            if name in chosen:
                globals()[f"section_{name}"](bench)
    cmd = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{cmd.strip()}  ({os.cpu_count()} CPUs, {write_settings()}, "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
          f"{time.perf_counter() - start:.0f} s)")
    print_table(bench.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

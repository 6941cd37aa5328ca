"""OME-Zarr and GEFF exports of the demo's stitched movie, read back with the field's tools.

Readers used: ``ome_zarr``'s reader (what napari's ``napari-ome-zarr`` plugin calls;
the plugin itself pulls napari and Qt, so it is not installed for the tests),
``geff``'s validation and reader, ``traccuracy`` (TRA against the CTC export),
``py-ctcmetrics``' ``valid()``, and ``zarr`` through ``s3fs`` against a local
S3-compatible server (moto in server mode on 127.0.0.1).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd.cli import main
from cellcrowd.config import load_config
from cellcrowd.errors import CellcrowdError, ConfigError, InputError
from cellcrowd.executor import LocalExecutor
from cellcrowd.export.cells import CellNodes, CellTable, cell_table, cell_values
from cellcrowd.export.ctc import read_ctc
from cellcrowd.export.geff import (
    _finish_metadata,
    export_geff,
    lineage_arrays,
    lineage_graph,
    write_geff,
)
from cellcrowd.export.omezarr import LABELS_NAME, export_omezarr, label_colour
from cellcrowd.export.zarrstore import ExportTarget, require
from cellcrowd.files import write_image
from cellcrowd.layout import WorkingFolder
from cellcrowd.pipeline import working_folder
from cellcrowd.sim.demo import ExampleSettings, run_demo
from cellcrowd.stitch import read_stitched
from helpers import file_hashes

SMALL = ExampleSettings(frames=12, shape=(96, 96), cells=6, divisions=2, montage_len=4,
                        row_length=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkingFolder]:
    folder = tmp_path_factory.mktemp("zarrdemo") / "demo"
    result = run_demo(folder, settings=SMALL)
    assert {"omezarr", "geff"} <= set(result.summary.ran)
    return result.config_path, working_folder(load_config(result.config_path))


def _nodes(location: str, **options: Any) -> tuple[Any, Any]:
    """The image and labels nodes, as napari-ome-zarr gets them from ome_zarr's reader."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(location, **options))())
    labels = [n for n in nodes if n.load(Label) is not None]
    assert len(labels) == 1
    return nodes[0], labels[0]


def test_omezarr_opens_with_the_ome_zarr_reader(demo: tuple[Path, WorkingFolder]) -> None:
    _, wf = demo
    raw, stitched, lineage = read_stitched(wf)
    assert raw is not None
    image, labels = _nodes(str(wf.zarr_exports / wf.omezarr_name))
    frames, height, width = stitched.shape
    assert [a["name"] for a in image.metadata["axes"]] == ["t", "c", "y", "x"]
    assert [a["name"] for a in labels.metadata["axes"]] == ["t", "y", "x"]
    assert image.data[0].shape == (frames, 1, height, width)
    assert image.data[0].dtype == raw.dtype
    np.testing.assert_array_equal(np.asarray(image.data[0])[:, 0], raw)
    assert labels.data[0].dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(labels.data[0]), stitched)  # exactly
    # A pyramid: y and x halved per level, every level chunked by frame.
    assert len(image.data) == len(labels.data) >= 2
    for level, (img, lab) in enumerate(zip(image.data, labels.data, strict=True)):
        assert img.shape[2:] == lab.shape[1:] == (-(-height // 2 ** level),
                                                    -(-width // 2 ** level))
        assert img.chunks[0] == lab.chunks[0] == (1,) * frames
    # Properties and a colour for every label, with what the lineage and pixels say.
    props = labels.metadata["properties"]
    present = sorted(int(v) for v in np.unique(stitched) if v)
    assert sorted(props) == present
    for label in present:
        p = props[label]
        in_frames = np.flatnonzero((stitched == label).any(axis=(1, 2)))
        assert (p["first_frame"], p["last_frame"]) == (in_frames[0], in_frames[-1])
        assert p["track_id"] == label
        assert p["parent"] == (lineage[label]["parent"] or 0)
        assert p["montages"]
        assert all(m.startswith(f"{wf.identifier}_x_") for m in p["montages"])
        assert 0 <= p["agreement"] <= 1  # the demo's consensus reports give it
    assert sorted(labels.metadata["color"]) == present


def test_label_montages_are_those_whose_tiles_overlap(demo: tuple[Path, WorkingFolder]) -> None:
    _, wf = demo
    table = cell_table(wf)
    # A cell living through every part came from montages of every montage number.
    _, _, lineage = read_stitched(wf)
    longest = max(lineage, key=lambda k: len(lineage[k]["frames"]))
    numbers = {int(m.rsplit("_", 1)[1]) for m in table.montages[longest]}
    first, last = min(lineage[longest]["frames"]), max(lineage[longest]["frames"])
    assert numbers == set(range(first // SMALL.montage_len, last // SMALL.montage_len + 1))


def test_a_cell_table_without_nodes_differs_only_in_its_nodes(
        demo: tuple[Path, WorkingFolder]) -> None:
    """The OME-Zarr's table skips the per-frame measurements (nodes), nothing else."""
    _, wf = demo
    full, light = cell_table(wf), cell_table(wf, nodes=False)
    assert len(full.nodes) > 0
    assert len(light.nodes) == 0
    assert dataclasses.replace(light, nodes=full.nodes) == full


def test_a_cell_table_read_on_worker_processes_is_the_one_read_here(
        demo: tuple[Path, WorkingFolder], tmp_path: Path) -> None:
    """The frames after the first go to the executor; the table is the same, and a frame
    of another size is still named."""
    _, wf = demo
    here = cell_table(wf)
    with LocalExecutor(2) as executor:
        pooled = cell_table(wf, executor=executor)
        assert len(executor.worker_pids()) == 2
        assert len(here.nodes) > 0
        assert here.montages
        for column in dataclasses.fields(CellNodes):
            np.testing.assert_array_equal(getattr(pooled.nodes, column.name),
                                          getattr(here.nodes, column.name))
        assert dataclasses.replace(pooled, nodes=here.nodes) == here
        copy = WorkingFolder(tmp_path / "copy", wf.identifier)
        shutil.copytree(wf.base, copy.base)
        write_image(copy.stitched_frame("annotated", 3), np.zeros((5, 5), np.uint16))
        with pytest.raises(InputError, match=r"frame 3 is \(5, 5\)"):
            cell_table(copy, executor=executor)


def test_the_geffs_table_drops_only_the_lineages_frame_lists(
        demo: tuple[Path, WorkingFolder]) -> None:
    """Without frame lists (what the GEFF stage reads) the graph is the same."""
    _, wf = demo
    full, lean = cell_table(wf), cell_table(wf, frames=False)
    assert any(len(e["frames"]) > 1 for e in full.lineage.values())
    assert lean.lineage == {label: {k: v for k, v in entry.items() if k != "frames"}
                            for label, entry in full.lineage.items()}
    assert dataclasses.replace(lean, lineage=full.lineage, nodes=full.nodes) == full
    for column in dataclasses.fields(full.nodes):
        np.testing.assert_array_equal(getattr(lean.nodes, column.name),
                                      getattr(full.nodes, column.name))
    for frames in [None, *full.part_frames.values()]:
        a, b = lineage_arrays(full, frames), lineage_arrays(lean, frames)
        assert b.edges > 0
        np.testing.assert_array_equal(a.edge_ids, b.edge_ids)
        np.testing.assert_array_equal(a.node_ids, b.node_ids)


# traccuracy's matcher notes that it computes the predicted boxes itself.
@pytest.mark.filterwarnings("ignore:'res_boxes' and/or 'res_labels':UserWarning")
def test_geff_validates_and_gives_tra_1_against_the_ctc_export(
        demo: tuple[Path, WorkingFolder]) -> None:
    import geff
    from traccuracy import run_metrics
    from traccuracy.loaders import load_ctc_data, load_geff_data
    from traccuracy.matchers import CTCMatcher
    from traccuracy.metrics import CTCMetrics

    _, wf = demo
    path = wf.zarr_exports / wf.geff_name()
    geff.validate_structure(str(path))
    meta = geff.GeffMetadata.read(str(path))
    labels_obj = next(o for o in meta.related_objects if o.type == "labels")
    assert labels_obj.node_prop == "seg_id"
    seg = (path / labels_obj.path).resolve()
    pred = load_geff_data(str(path), seg_path=str(seg), seg_property="seg_id")
    gt = load_ctc_data(str(wf.ctc / "01_GT" / "TRA"), str(wf.ctc / "01_GT" / "TRA" /
                                                         "man_track.txt"))
    results, _ = run_metrics(gt_data=gt, pred_data=pred, matcher=CTCMatcher(),
                             metrics=[CTCMetrics()])
    assert results[0]["results"]["TRA"] == 1.0
    assert results[0]["results"]["fp_edges"] == results[0]["results"]["fn_edges"] == 0


def test_geff_nodes_are_the_cells_of_each_frame(demo: tuple[Path, WorkingFolder]) -> None:
    import geff
    from scipy import ndimage

    _, wf = demo
    graph, meta = geff.read(str(wf.zarr_exports / wf.geff_name()), backend="networkx")
    _, stitched, lineage = read_stitched(wf)
    assert [(a.name, a.type) for a in meta.axes] == [("t", "time"), ("y", "space"),
                                                      ("x", "space")]
    assert graph.number_of_nodes() == sum(len(np.unique(f)) - 1 for f in stitched)
    for _, node in graph.nodes(data=True):
        mask = stitched[node["t"]] == node["seg_id"]
        assert node["area"] == mask.sum()
        assert np.allclose((node["y"], node["x"]), ndimage.center_of_mass(mask))
        assert node["track_id"] == node["seg_id"]
    divisions = [n for n in graph.nodes if graph.out_degree(n) == 2]
    assert len(divisions) == sum(1 for e in lineage.values() if e["daughters"])


def test_geff_per_part_splits_the_frames(demo: tuple[Path, WorkingFolder],
                                         tmp_path: Path) -> None:
    import geff

    _, wf = demo
    target = ExportTarget(str(tmp_path))
    written = export_geff(wf, target, parts=True)
    assert len(written) == 1 + -(-SMALL.frames // SMALL.montage_len)
    whole, _ = geff.read(written[0], backend="networkx")
    counts = 0
    for location in written[1:]:
        geff.validate_structure(location)
        part, _ = geff.read(location, backend="networkx")
        times = {d["t"] for _, d in part.nodes(data=True)}
        assert max(times) - min(times) < SMALL.montage_len
        counts += part.number_of_nodes()
    assert counts == whole.number_of_nodes()


def _reference_graph(table: CellTable, frames: range | None) -> Any:
    """The lineage graph as it was built before the arrays (node by node, in networkx)."""
    import networkx as nx

    graph = nx.DiGraph()
    runs: dict[int, list[int]] = {}
    n = table.nodes
    for i in range(len(n)):
        lab, t = int(n.label[i]), int(n.t[i])
        if frames is not None and t not in frames:
            continue
        attrs: dict[str, Any] = {"t": t, "y": float(n.y[i]), "x": float(n.x[i]),
                                 "area": int(n.area[i]), "seg_id": lab, "track_id": lab}
        for key, values in (("support", table.support), ("agreement", table.agreement)):
            if values.get(lab) is not None:
                attrs[key] = values[lab]
        runs.setdefault(lab, []).append(graph.number_of_nodes())
        graph.add_node(graph.number_of_nodes(), **attrs)
    for ids in runs.values():
        ids.sort(key=lambda node: graph.nodes[node]["t"])
        graph.add_edges_from(itertools.pairwise(ids))
    for lab, ids in runs.items():
        for daughter in table.lineage.get(lab, {}).get("daughters") or []:
            if runs.get(int(daughter)):
                graph.add_edge(ids[-1], runs[int(daughter)][0])
    return graph


def _random_table(rng: np.random.Generator) -> CellTable:
    """Cells with gaps, divisions (a daughter named twice, one never seen) and
    support/agreement some cells lack."""
    rows = []
    for t in range(12):
        for lab in sorted(rng.choice(np.arange(1, 30), size=int(rng.integers(0, 12)),
                                     replace=False).tolist()):
            rows.append((lab, t, float(rng.random() * 50), float(rng.random() * 50),
                         int(rng.integers(1, 90))))
    lineage: dict[int, dict[str, Any]] = {lab: {"daughters": []} for lab in range(1, 30)}
    for parent in rng.choice(np.arange(1, 30), size=6, replace=False).tolist():
        kids = rng.choice(np.arange(1, 31), size=2, replace=False).tolist()
        lineage[parent]["daughters"] = [*kids, kids[0]]  # 30 never appears
    support = {lab: (None if rng.random() < 0.3 else round(float(rng.random()), 6))
               for lab in range(1, 30)}
    table = CellTable(12, (50, 50), CellNodes.of(rows), lineage, support=support,
                      agreement={lab: 0.5 for lab in range(1, 30)})
    table.part_frames = {1: range(0, 5), 2: range(5, 12)}
    return table


def test_geff_from_arrays_is_the_files_geff_writes_from_a_graph(
        demo: tuple[Path, WorkingFolder], tmp_path: Path) -> None:
    geff = require("geff")
    _, wf = demo
    tables = [cell_table(wf), _random_table(np.random.default_rng(1)),
              CellTable(3, (4, 4), CellNodes.of([]), {})]
    for k, table in enumerate(tables):
        for frames in [None, *table.part_frames.values()]:
            ours, want = tmp_path / f"ours{k}.geff", tmp_path / f"want{k}.geff"
            write_geff(str(ours), lineage_arrays(table, frames), "../x.ome.zarr")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # geff warns about an empty graph's props
                geff.write(_reference_graph(table, frames), str(want), axis_names=["t", "y", "x"],
                           axis_types=["time", "space", "space"],
                           axis_units=["frame", "pixel", "pixel"], zarr_format=2,
                           overwrite=True)
            _finish_metadata(str(want), "../x.ome.zarr")
            assert file_hashes(ours, skip_folders=()) == file_hashes(want, skip_folders=())
            got = lineage_graph(table, frames)
            reference = _reference_graph(table, frames)
            assert list(got.nodes(data=True)) == list(reference.nodes(data=True))
            assert list(got.edges) == list(reference.edges)
            shutil.rmtree(ours)
            shutil.rmtree(want)


def test_geff_written_a_chunk_at_a_time_is_what_geff_writes_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrays of many chunks (ours and geff's chunk size made tiny), the last one partial:
    the same files as ``geff.core_io.write_arrays`` given the whole arrays."""
    require("geff")
    from geff.core_io import _base_write, write_arrays
    from geff_spec.utils import create_or_update_metadata, update_metadata_axes

    from cellcrowd.export import geff as ours

    table = _random_table(np.random.default_rng(7))
    arrays = lineage_arrays(table)
    props, edge_ids = arrays.node_props, arrays.edge_ids  # made whole, in one block
    assert arrays.nodes > 8
    assert len(arrays.divisions) > 1
    assert props["support"]["missing"] is not None
    # ours made in blocks of 3 nodes, written in chunks of 5 values, 2 edges, 40 flags
    monkeypatch.setattr(ours, "BLOCK_NODES", 3)
    monkeypatch.setattr(ours, "CHUNK_BYTES", 40)
    monkeypatch.setattr(_base_write, "_TARGET_CHUNK_BYTES", 40)
    write_geff(str(tmp_path / "ours.geff"), lineage_arrays(table), "../x.ome.zarr")
    edges = json.loads((tmp_path / "ours.geff" / "edges" / "ids" / ".zarray").read_text())
    assert (edges["chunks"], edges["shape"]) == ([2, 2], [arrays.edges, 2])
    metadata = update_metadata_axes(
        create_or_update_metadata(metadata=None, is_directed=True), *ours.AXES,
        None, None, None)
    want = str(tmp_path / "want.geff")
    write_arrays(want, arrays.node_ids, props,  # type: ignore[arg-type]
                 edge_ids, {}, metadata, zarr_format=2)
    _finish_metadata(want, "../x.ome.zarr")
    chunk_files = list((tmp_path / "ours.geff" / "nodes" / "props" / "x" / "values").glob("*"))
    assert len(chunk_files) > 3
    assert file_hashes(tmp_path / "ours.geff", skip_folders=()) == file_hashes(
        Path(want), skip_folders=())


def test_ctc_export_is_valid_for_py_ctcmetrics(demo: tuple[Path, WorkingFolder]) -> None:
    from ctc_metrics.metrics import valid
    from ctc_metrics.utils.filesystem import parse_masks, read_tracking_file
    from ctc_metrics.utils.representations import match

    _, wf = demo
    folder = wf.ctc / "01_GT" / "TRA"
    tracks = read_tracking_file(str(folder / "man_track.txt"))
    masks = parse_masks(str(folder))
    assert len(masks) == SMALL.frames
    labels = [match(None, m)[1] for m in masks]
    assert valid(masks, tracks, labels) == 1
    # ... and it notices a broken one: a parent that ends after its daughter begins.
    data = read_ctc(wf.ctc)
    daughter = next(t for t in data.tracks.values() if t.parent)
    tracks[tracks[:, 0] == daughter.parent, 2] = daughter.begin + 1
    with warnings.catch_warnings():  # it warns about each problem it finds
        warnings.simplefilter("ignore", UserWarning)
        assert valid(masks, tracks, labels) == 0


def test_napari_tracks_layer_from_the_geff(demo: tuple[Path, WorkingFolder]) -> None:
    """What a napari user does: labels from the plugin's reader, tracks from the GEFF."""
    import geff

    _, wf = demo
    _, labels = _nodes(str(wf.zarr_exports / wf.omezarr_name))
    movie = np.asarray(labels.data[0])
    graph, _ = geff.read(str(wf.zarr_exports / wf.geff_name()), backend="networkx")
    # napari's Tracks layer: rows (track_id, t, y, x) and {daughter: [parent]}.
    data = np.array(sorted((d["track_id"], d["t"], d["y"], d["x"])
                           for _, d in graph.nodes(data=True)))
    parents = {graph.nodes[b]["track_id"]: [graph.nodes[a]["track_id"]]
               for a, b in graph.edges if graph.nodes[a]["track_id"] !=
               graph.nodes[b]["track_id"]}
    for track, t, y, x in data[:: max(1, len(data) // 25)]:
        assert movie[int(t), round(y), round(x)] in (0, track)  # centroids sit on their cell
    props = labels.metadata["properties"]
    assert parents == {k: [v["parent"]] for k, v in props.items() if v["parent"]}


# -- s3:// on a local S3-compatible server ---------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="lab")
        yield {"endpoint_url": endpoint}
    finally:
        server.stop()


def test_exports_to_s3_read_back_equal(demo: tuple[Path, WorkingFolder],
                                       s3: dict[str, str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import geff
    import zarr

    config_path, wf = demo
    local = ExportTarget(str(wf.zarr_exports))
    remote = ExportTarget("s3://lab/runs/1", s3)
    url = export_omezarr(wf, remote)
    assert url == f"s3://lab/runs/1/{wf.omezarr_name}"
    for path in ("s0", "s1", f"labels/{LABELS_NAME}/s0", f"labels/{LABELS_NAME}/s1"):
        got = zarr.open_array(remote.store(f"{url}/{path}", read_only=True), mode="r")
        want = zarr.open_array(local.store(local.url(f"{wf.omezarr_name}/{path}")), mode="r")
        np.testing.assert_array_equal(got[:], want[:])
    a = dict(remote.open_group(wf.omezarr_name)[f"labels/{LABELS_NAME}"].attrs)
    b = dict(local.open_group(wf.omezarr_name)[f"labels/{LABELS_NAME}"].attrs)
    assert a == b

    # The CLI writes the GEFF there too (--to), recording where in the receipt.
    capsys.readouterr()
    assert main(["-q", "export", "geff", str(config_path), "--to", "s3://lab/runs/2",
                 "--set", f"outputs.export_storage_options.endpoint_url={s3['endpoint_url']}",
                 "--force"]) == 0, capsys.readouterr().err
    receipt = json.loads(wf.export_receipt("geff").read_text())
    assert receipt["location"] == f"s3://lab/runs/2/{wf.geff_name()}"
    assert receipt["remote"]
    # (geff's metadata reader opens the group in mode "a", so the store must be writable)
    got, _ = geff.read(remote.store(f"s3://lab/runs/2/{wf.geff_name()}"), backend="networkx")
    # (the stage moved its output to s3: the local copy it wrote before is gone)
    assert not any(p.is_file() for p in wf.zarr_exports.joinpath(wf.geff_name()).rglob("*"))
    reference = export_geff(wf, ExportTarget(str(tmp_path)))[0]
    want, _ = geff.read(reference, backend="networkx")
    assert sorted(got.nodes(data=True)) == sorted(want.nodes(data=True))
    assert sorted(got.edges) == sorted(want.edges)


# -- errors and the optional extra ----------------------------------------------------------


def test_missing_extra_says_how_to_install() -> None:
    with pytest.raises(CellcrowdError, match=r"pip install 'cellcrowd\[zarr\]'"):
        require("no_such_module_cellcrowd")


def test_auto_follows_the_extra(demo: tuple[Path, WorkingFolder],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import cellcrowd.export.zarrstore as zs

    cfg = load_config(demo[0])
    assert cfg.outputs.omezarr == "auto"
    assert cfg.outputs.wants("omezarr")
    monkeypatch.setattr(zs, "zarr_extra_installed", lambda: False)
    assert not cfg.outputs.wants("omezarr")
    assert not cfg.outputs.wants("geff")
    assert cfg.with_overrides({"outputs.geff": True}).outputs.wants("geff")
    with pytest.raises(ConfigError, match=r"outputs\.omezarr is built from the stitched movie"):
        cfg.with_overrides({"outputs.omezarr": True, "outputs.stitched": False,
                            "outputs.trk": False, "outputs.ctc": False})


def test_consensus_values_are_read_tolerantly() -> None:
    report = {"mean_agreement": 0.75, "cells": [{"label": 3, "support": 0.6,
                                                  "agreement": 0.9}]}
    assert cell_values(report, 3) == (0.6, 0.9)
    assert cell_values(report, 4) == (None, 0.75)  # not listed: the montage's mean
    assert cell_values({"cells": {"5": {"support": 1}}}, 5) == (1.0, None)
    assert cell_values(None, 1) == (None, None)


def test_bad_inputs_are_named(demo: tuple[Path, WorkingFolder], tmp_path: Path) -> None:
    _, wf = demo
    empty = WorkingFolder(tmp_path / "empty", wf.identifier)
    with pytest.raises(InputError, match="no stitched frames"):
        cell_table(empty)
    copy = WorkingFolder(tmp_path / "copy", wf.identifier)
    shutil.copytree(wf.stitched, copy.stitched)
    shutil.rmtree(copy.stitched_frame("raw", 0).parent)
    with pytest.raises(InputError, match="OME-Zarr needs the raw movie"):
        export_omezarr(copy, ExportTarget(str(tmp_path / "out")))
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / wf.geff_name()).write_text("not a folder")
    with pytest.raises(InputError, match="expected a folder for the zarr store"):
        export_geff(copy, ExportTarget(str(tmp_path / "out")))


def test_label_colours_are_stable_and_opaque() -> None:
    colours = [label_colour(k) for k in range(1, 50)]
    assert all(len(c) == 4 and c[3] == 255 and all(0 <= v <= 255 for v in c) for c in colours)
    assert len({tuple(c) for c in colours}) == len(colours)


def _stitched_folder(base: Path, frames: int, size: int = 256) -> WorkingFolder:
    from cellcrowd.files import atomic_write_text, write_image

    wf = WorkingFolder(base, "mem")
    rng = np.random.default_rng(frames)
    for t in range(frames):
        labels = np.zeros((size, size), np.uint16)
        labels[10 + t % 50:60 + t % 50, 20:90] = 1
        write_image(wf.stitched_frame("annotated", t), labels)
        write_image(wf.stitched_frame("raw", t), rng.integers(0, 4000, (size, size),
                                                               dtype=np.uint16))
    atomic_write_text(wf.stitched_lineage, json.dumps({"1": {
        "label": 1, "frames": list(range(frames)), "daughters": [], "capped": False,
        "frame_div": None, "parent": None}}))
    return wf


def test_omezarr_memory_does_not_grow_with_the_movie(tmp_path: Path) -> None:
    """Peak memory of the export for 32 frames is not 4x that for 8: frames are streamed."""
    import tracemalloc

    peaks = []
    for frames in (2, 8, 32):  # the first run imports the writers: not measured
        wf = _stitched_folder(tmp_path / str(frames), frames)
        table = cell_table(wf)
        tracemalloc.start()
        export_omezarr(wf, table=table)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    frame_bytes = 2 * 256 * 256 * 2  # one raw and one label frame
    assert peaks[2] < peaks[1] + 8 * frame_bytes, peaks  # 24 more frames held would be 6 MB


def test_qc_page_links_the_zarr_exports_with_a_napari_snippet(
        demo: tuple[Path, WorkingFolder]) -> None:
    _, wf = demo
    page = (wf.qc / "index.html").read_text(encoding="utf-8")
    for name in (wf.omezarr_name, wf.geff_name()):
        assert f"zarr/{name}" in page
    assert "napari-ome-zarr" in page
    assert "geff.read" in page

"""Per-layer error meets per-op time: real conversions, a real debugger run, profiles stored through the real agent."""

from __future__ import annotations

import dataclasses
import io
import json
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qcore.boards.client import bench_on_board
from qcore.engines.tf import convert
from qcore.explain.debugger import run_debugger
from qcore.inputs.models import load_model
from qcore.lab import op_cost
from qcore.lab.publish import publish, register
from qcore.qtyping import Dataset, LoadedModel, QlabError, TimeSource
from qcore.store import Store
from tests.board_agent.harness import TOKEN, running_agent

# every test here converts real models and runs the debugger (module fixtures, once)
pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parent.parent / "board_agent" / "samples"
# small sets keep the debugger run around a second
CAL, DEBUG = 30, 20


def _tiny(tmp: Path, name: str, *, second_conv: bool, softmax: bool) -> LoadedModel:
    """An 8x8 CNN named like the sample profiles' model (sequential/conv2d…/flatten/dense), saved and loaded back."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="conv2d")]
    if second_conv:
        layers.append(keras.layers.Conv2D(6, 3, activation="relu", name="conv2d_1"))
    layers += [keras.layers.Flatten(name="flatten"),
               keras.layers.Dense(10, activation="softmax" if softmax else None, name="dense")]
    model = keras.Sequential(layers, name="sequential")
    model.compile("adam", "sparse_categorical_crossentropy")
    path = tmp / f"{name}.h5"
    model.save(path)
    return load_model(path)


@pytest.fixture(scope="module")
def digits_hwc(digits: Dataset) -> Dataset:
    """The digits with a channel axis (8, 8, 1), so the first op of the graph is the conv, as in the samples."""
    return dataclasses.replace(digits, name="digits-hwc", x_train=digits.x_train[..., None],
                               x_test=digits.x_test[..., None])


def _stand_in_benchmark_model(tmp: Path, sample: str) -> str:
    """A benchmark_model at the path layout the agent globs for, printing a real-format sample profile."""
    binary = tmp / "bm" / "tensorflow-lite-2.11.1" / "examples" / "benchmark_model"
    binary.parent.mkdir(parents=True)
    binary.write_text(f"#!/bin/sh\ncat {SAMPLES / sample}\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return str(tmp / "bm" / "tensorflow-lite-*" / "examples" / "benchmark_model")


@pytest.fixture(scope="module")
def cpu_setup(tmp_path_factory: pytest.TempPathFactory, digits_hwc: Dataset) -> Iterator[tuple[Store, int, bytes]]:
    """Conv→flatten→dense converted with int8-fallback (float I/O: quantize … dequantize), debugged, and
    profiled on cpu through the real agent whose benchmark_model prints the XNNPACK sample."""
    tmp = tmp_path_factory.mktemp("opcost_cpu")
    model = _tiny(tmp, "cpu", second_conv=False, softmax=False)
    store = Store(tmp / "qlab.duckdb")
    tflite = convert(model, "int8-fallback", digits_hwc.calibration(CAL))
    model_id, dataset_id = register(store, model, digits_hwc)
    vid = store.save_variant(model_id=model_id, dataset_id=dataset_id, name="int8-fallback", kind="ptq",
                             recipe="int8-fallback", tflite=tflite)
    publish(store, run_debugger(model, digits_hwc, recipe="int8-fallback", calibration_samples=CAL,
                                debug_samples=DEBUG), made_from=(model, digits_hwc))
    with running_agent(tmp / "agent", benchmark_model=_stand_in_benchmark_model(tmp, "benchmark_model_xnnpack.txt")) \
            as agent:
        store.add_board("imx", agent.url, TOKEN)
        bench_on_board(store, "imx", tflite, "cpu", runs=3, warmup=1, profile=True, variant_id=vid)
    try:
        yield store, vid, tflite
    finally:
        store.close()


@pytest.fixture(scope="module")
def npu_setup(tmp_path_factory: pytest.TempPathFactory, digits_hwc: Dataset) -> Iterator[tuple[Store, int, bytes]]:
    """Two convs→flatten→dense(softmax) converted with int8 (integer I/O), debugged, with the
    i.MX8M Plus VX-delegate sample stored as its npu profile through the real agent."""
    tmp = tmp_path_factory.mktemp("opcost_npu")
    model = _tiny(tmp, "npu", second_conv=True, softmax=True)
    store = Store(tmp / "qlab.duckdb")
    tflite = convert(model, "int8", digits_hwc.calibration(CAL))
    model_id, dataset_id = register(store, model, digits_hwc)
    vid = store.save_variant(model_id=model_id, dataset_id=dataset_id, name="int8", kind="ptq", recipe="int8",
                             tflite=tflite)
    publish(store, run_debugger(model, digits_hwc, recipe="int8", calibration_samples=CAL, debug_samples=DEBUG),
            made_from=(model, digits_hwc))
    # the agent here has no NPU, so the sample comes in as the cpu-plain target's profile and is re-labelled
    # npu in the store: the rows are the board's, only the target column says where they were taken
    with running_agent(tmp / "agent", benchmark_model=_stand_in_benchmark_model(tmp, "benchmark_model_npu.txt")) \
            as agent:
        store.add_board("imx", agent.url, TOKEN)
        bench_on_board(store, "imx", tflite, "cpu-plain", runs=3, warmup=1, profile=True, variant_id=vid)
    with store.transaction() as cur:
        cur.execute("UPDATE benchmarks SET target = 'npu' WHERE variant_id = ?", [vid])
    try:
        yield store, vid, tflite
    finally:
        store.close()


def test_graph_ops_conv_macs_by_hand(cpu_setup: tuple[Store, int, bytes]) -> None:
    _, _, tflite = cpu_setup
    ops = op_cost.graph_ops(tflite)
    assert [o.op_type for o in ops] == ["QUANTIZE", "CONV_2D", "RESHAPE", "FULLY_CONNECTED", "DEQUANTIZE"]
    conv, fc = ops[1], ops[3]
    # 3x3 valid conv on 8x8x1 into 4 channels: 6*6 outputs * 4 channels * (3*3*1) MACs each
    assert conv.macs == 6 * 6 * 4 * 3 * 3 * 1 == 1296
    # dense 144 -> 10
    assert fc.macs == 10 * 144
    # conv bytes: int8 input 64 + int8 filter 36 + int32 bias 4*4 + int8 output 144
    assert conv.bytes_moved == 64 + 36 + 16 + 144
    assert ops[2].macs == 0
    # the roofline: the slower of arithmetic and DDR traffic, plus dispatch
    assert op_cost.estimate_seconds(conv) == pytest.approx(
        max(1296 / op_cost.INT8_MACS_PER_S, 260 / op_cost.DDR_BYTES_PER_S) + op_cost.OP_OVERHEAD_S)
    # kept float, the same conv moves 4-byte tensors at the fp32 MAC rate
    assert op_cost.estimate_seconds(conv, as_float=True) > op_cost.estimate_seconds(conv)


def test_op_cost_joins_xnnpack_profile_and_debugger(cpu_setup: tuple[Store, int, bytes]) -> None:
    store, vid, _ = cpu_setup
    choices = op_cost.time_choices(store, vid)
    assert [(c.board, c.target, c.source) for c in choices] == [
        ("imx", "cpu", str(TimeSource.BOARD_PROFILE)), ("host", "estimate", str(TimeSource.ESTIMATE))]
    cost = op_cost.op_cost(store, vid)
    t = cost.table.set_index("op_index")
    assert cost.board == "imx" and cost.target == "cpu" and cost.time_source == TimeSource.BOARD_PROFILE
    # [tfl.quantize]:0 and [StatefulPartitionedCall:0]:4 by index + tensor; XNNPACK's conv and FC by order
    assert t.loc[0, "mapped_by"] == op_cost.MAPPED_BY_NAME and t.loc[0, "time_ms"] == pytest.approx(0.003)
    assert t.loc[4, "mapped_by"] == op_cost.MAPPED_BY_NAME and t.loc[4, "time_ms"] == pytest.approx(0.004)
    assert t.loc[1, "time_ms"] == pytest.approx(0.058) and t.loc[1, "mapped_by"].startswith("order")
    assert t.loc[3, "time_ms"] == pytest.approx(0.026)
    # XNNPACK folds the reshape: no time of its own
    assert np.isnan(t.loc[2, "time_ms"])
    assert cost.total_ms == pytest.approx(0.003 + 0.058 + 0.026 + 0.004)
    assert t["time_share"].sum() == pytest.approx(1.0)
    assert set(t["time_source"].dropna()) - {""} == {str(TimeSource.BOARD_PROFILE)}
    # the debugger's rows join by output tensor: the conv is quantized, so it has an rmse/scale
    stats = store.layer_stats(int(cost.debug_run_id))  # type: ignore[arg-type]
    conv_row = stats[stats["op_name"] == "CONV_2D"].iloc[0]
    assert t.loc[1, "rmse_scale"] == pytest.approx(conv_row["rmse_scale"])
    assert t.loc[1, "range"] == pytest.approx(conv_row["range"])
    assert t.loc[1, "error_match"] == op_cost.ERROR_BY_NAME
    # the variant renames the FC's output ("StatefulPartitionedCall:01": its DEQUANTIZE took ":0"), the debug
    # model does not: the FC row still lands on the FC, by op type and order, never on the dequantize
    fc_row = stats[stats["op_name"] == "FULLY_CONNECTED"].iloc[0]
    assert t.loc[3, "rmse_scale"] == pytest.approx(fc_row["rmse_scale"])
    assert t.loc[3, "error_match"] == op_cost.ERROR_BY_ORDER
    # the FC is named by the model's output key (its Keras layer), not the converter's "StatefulPartitionedCall"
    assert t["layer"].tolist() == ["quantize #0", "conv2d #1", "flatten #2", "dense #3", "dequantize #4"]
    assert np.isnan(t.loc[4, "rmse_scale"]) and np.isnan(t.loc[0, "rmse_scale"])
    # keeping the conv float on the CPU: its CPU time times float/int8, plus a boundary pair: dearer
    assert t.loc[1, "float_on_cpu_ms"] > t.loc[1, "time_ms"]
    assert t.loc[1, "float_cost_source"] == f"{TimeSource.BOARD_PROFILE} on imx / cpu"


def test_op_cost_estimate_is_labelled(cpu_setup: tuple[Store, int, bytes]) -> None:
    store, vid, _ = cpu_setup
    cost = op_cost.op_cost(store, vid, board="host")
    assert cost.time_source == TimeSource.ESTIMATE
    assert set(cost.table["time_source"]) == {str(TimeSource.ESTIMATE)}
    assert cost.table["time_ms"].notna().all()
    assert any("estimate" in n for n in cost.notes)
    t = cost.table.set_index("op_index")
    # the estimate follows the roofline op by op (one common scale at most)
    ratio = t.loc[1, "time_ms"] / t.loc[3, "time_ms"]
    ops = {o.index: o for o in op_cost.graph_ops(cpu_setup[2])}
    assert ratio == pytest.approx(op_cost.estimate_seconds(ops[1]) / op_cost.estimate_seconds(ops[3]))


def test_op_cost_unknown_board_lists_choices(cpu_setup: tuple[Store, int, bytes]) -> None:
    store, vid, _ = cpu_setup
    with pytest.raises(QlabError, match=r"no per-op profile on elsewhere .*imx / cpu"):
        op_cost.op_cost(store, vid, board="elsewhere")


def test_op_cost_npu_sample_fused_node_stays_unmapped(npu_setup: tuple[Store, int, bytes]) -> None:
    store, vid, _ = npu_setup
    cost = op_cost.op_cost(store, vid, board="imx", target="npu")
    t = cost.table.set_index("op_index")
    assert list(t["op_type"]) == ["CONV_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    # the CPU fallback rows of the real-format VX delegate profile map by index and tensor name
    assert t.loc[2, "time_ms"] == pytest.approx(0.011) and t.loc[2, "mapped_by"] == op_cost.MAPPED_BY_NAME
    assert t.loc[4, "time_ms"] == pytest.approx(0.013)
    # the sample's FC was named by the board's older converter ("…MatMul;…BiasAdd"); this graph's op 3
    # outputs another name, so the row is not pinned on it (on a real board the file is the same one)
    assert np.isnan(t.loc[3, "time_ms"])
    # the Vx Delegate node (index 5, past the graph's 5 ops) ran both convs: no per-op split
    assert np.isnan(t.loc[0, "time_ms"]) and np.isnan(t.loc[1, "time_ms"])
    un = cost.unmapped.set_index("node_type")
    assert list(un.index) == ["Vx Delegate", "FULLY_CONNECTED"]
    assert un.loc["Vx Delegate", "time_ms"] == pytest.approx(2.247)
    assert un.loc["Vx Delegate", "why"].startswith("a delegate node")
    assert "op 3 of this graph outputs" in un.loc["FULLY_CONNECTED", "why"]
    # every row's time counts in the total, mapped or not
    assert cost.total_ms == pytest.approx(2.247 + 0.011 + 0.136 + 0.013)
    assert t.loc[2, "time_share"] == pytest.approx(0.011 / cost.total_ms)
    # no CPU profile on that board: keeping a conv float is costed by the estimate, and says so
    assert t.loc[0, "float_cost_source"] == str(TimeSource.ESTIMATE) and t.loc[0, "float_on_cpu_ms"] > 0


def test_join_npu_maps_only_when_counts_agree(npu_setup: tuple[Store, int, bytes]) -> None:
    _, _, tflite = npu_setup
    ops = op_cost.graph_ops(tflite)
    cpu = {2: 0.011, 3: 0.136, 4: 0.013}
    rows = [{"index": 0, "time_ms": 1.0, "ddr_read_mb": 0.5, "ddr_write_mb": 0.25}, {"index": 1, "time_ms": 0.5}]
    ms, how, unmapped, _, ddr = op_cost.join_npu(ops, rows, cpu)
    assert ms == {0: 1.0, 1: 0.5} and how[1].startswith("order (NPU operation 1)") and not unmapped
    assert ddr[0] == pytest.approx(0.75) and np.isnan(ddr[1])
    ms, _, unmapped, notes, _ = op_cost.join_npu(ops, [{"time_ms": 0.7}], cpu)
    assert ms == {} and len(unmapped) == 1 and "not mapped" in notes[0]


def test_node_data_files_and_zip(cpu_setup: tuple[Store, int, bytes], tmp_path: Path) -> None:
    store, vid, _ = cpu_setup
    cost = op_cost.op_cost(store, vid)
    paths = op_cost.write_node_data(cost, tmp_path / "nd")
    names = {p.name for p in paths}
    assert {"int8-fallback.rmse_scale.json", "int8-fallback.time_ms.json"} <= names
    doc = json.loads((tmp_path / "nd" / "int8-fallback.time_ms.json").read_text())
    assert list(doc) == [cost.graph_id] == ["main"]
    assert doc["main"]["results"]["1"] == {"value": pytest.approx(0.058)}
    assert "2" not in doc["main"]["results"]  # the folded reshape has no time
    with zipfile.ZipFile(io.BytesIO(op_cost.node_data_zip(cost))) as zf:
        assert set(zf.namelist()) == names


def test_node_data_loads_with_model_explorer_classes(cpu_setup: tuple[Store, int, bytes], tmp_path: Path) -> None:
    pytest.importorskip("model_explorer", reason="ai-edge-model-explorer (the test extra) is not installed")
    from dacite import from_dict
    from model_explorer.builtin_tflite_flatbuffer_adapter import BuiltinTfliteFlatbufferAdapter
    from model_explorer.node_data_builder import GraphNodeData, ModelNodeData

    store, vid, tflite = cpu_setup
    cost = op_cost.op_cost(store, vid)
    model_path = tmp_path / "m.tflite"
    model_path.write_bytes(tflite)
    graphs = BuiltinTfliteFlatbufferAdapter().convert(str(model_path), {})["graphCollections"][0].graphs
    adapter_nodes = {g["id"]: {n["id"]: n["label"] for n in g["nodes"]} for g in graphs}
    for path in op_cost.write_node_data(cost, tmp_path / "nd"):
        raw = json.loads(path.read_text())
        model_data = ModelNodeData(graphsData={gid: from_dict(GraphNodeData, g) for gid, g in raw.items()})
        # the package writes back what we wrote (plus its own defaults for fields we left out)
        written = json.loads(model_data.to_json_string())
        for gid, graph in raw.items():
            assert {k: written[gid][k] for k in graph} == graph
        for gid, graph in model_data.graphsData.items():
            assert gid in adapter_nodes, f"{path.name}: graph {gid!r} not in the adapter's {list(adapter_nodes)}"
            for node_id in graph.results:
                op_type = cost.table.set_index("node_id").loc[node_id, "op_type"]
                # the adapter's node with that id is the same op
                assert adapter_nodes[gid][node_id] == op_type.lower()


def test_op_cost_npu_driver_profile_from_the_evk_capture(npu_setup: tuple[Store, int, bytes]) -> None:
    from board_agent.npu_profile import map_to_tflite, parse_npu_profile
    from board_agent.profile import parse_op_profile
    from qcore.qtyping import Latency

    store, vid, tflite = npu_setup
    # the real i.MX8M Plus capture (yolov3-tiny, VIV_VX_PROFILE=1), parsed by the agent's own parsers
    text = (SAMPLES / "04-imx8mp-vx-yolov3tiny-vivprofile.txt").read_text()
    profile = parse_op_profile(text)
    profile["npu"] = map_to_tflite(parse_npu_profile(text), ["CONV_2D", "CONV_2D"])
    assert profile["npu"]["available"]
    lat = Latency(target="npu", threads=4, xnnpack=False, runs=1, warmup=1, init_ms=1, first_ms=1, min_ms=1,
                  mean_ms=1, p50_ms=1, p90_ms=1, p99_ms=1, std_ms=0, extra={"profile": profile})
    store.add_benchmark(lat, sha256="x" * 64, board="evk", variant_id=vid)
    choice = next(c for c in op_cost.time_choices(store, vid) if c.board == "evk")
    assert choice.source == TimeSource.NPU_DRIVER
    cost = op_cost.op_cost(store, vid, board="evk", target="npu")
    n_npu = len(profile["npu"]["ops"])
    # that graph's NPU operations do not pair with this graph's ops: kept whole, counted in the total
    assert (cost.unmapped["node_type"] == "NPU operation").sum() == n_npu
    assert "Vx Delegate" not in set(cost.unmapped["node_type"])
    assert cost.total_ms >= profile["npu"]["total_ms"] - 1e-9
    assert any("not mapped to single ops" in n for n in cost.notes)


def test_cli_op_cost_json_and_export_node_data(cpu_setup: tuple[Store, int, bytes], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from qcore.cli import main

    store, vid, _ = cpu_setup
    db = str(store.path)
    assert main(["op-cost", str(vid), "--db", db, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["time_source"] == str(TimeSource.BOARD_PROFILE) and payload["board"] == "imx"
    conv = next(r for r in payload["rows"] if r["op_index"] == 1)
    assert conv["time_ms"] == pytest.approx(0.058) and conv["rmse_scale"] > 0
    # by name, with the estimate
    assert main(["export-node-data", "int8-fallback", "--board", "host", "--out", str(tmp_path / "nd"),
                 "--db", db]) == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "model-explorer" in out and "--node_data_paths=" in out
    doc = json.loads((tmp_path / "nd" / "int8-fallback.time_ms.json").read_text())
    assert set(doc["main"]["results"]) == {"0", "1", "2", "3", "4"}  # the estimate times every op


def test_cli_export_node_data_unknown_variant_exits_2(cpu_setup: tuple[Store, int, bytes], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from qcore.cli import main

    store, _, _ = cpu_setup
    assert main(["export-node-data", "nope", "--out", str(tmp_path), "--db", str(store.path)]) == 2
    err = capsys.readouterr().err
    assert "no variant named 'nope' (known: int8-fallback)" in err and "Traceback" not in err
    assert main(["op-cost", "1", "--board", "elsewhere", "--db", str(store.path)]) == 2
    assert "no per-op profile on elsewhere" in capsys.readouterr().err
    assert main(["op-cost", "1", "--debug-run", "99", "--db", str(store.path)]) == 2
    assert "no debugger run #99 of variant #1's model (its runs: 1)" in capsys.readouterr().err


def test_report_carries_the_op_cost_table(cpu_setup: tuple[Store, int, bytes]) -> None:
    from qcore.lab.reports import make_report, op_cost_tables, render_html

    store, vid, _ = cpu_setup
    report = store.report(make_report(store, "layers", "", [vid]))
    entry = report["content"]["op_cost"][str(vid)]
    assert entry["time_source"] == str(TimeSource.BOARD_PROFILE) and len(entry["rows"]) == 5
    (caption, table), = op_cost_tables(report["content"])
    assert "imx / cpu" in caption and "board profile (benchmark_model)" in caption
    page = render_html(report)
    assert "Per-layer error and time" in page and "board profile (benchmark_model)" in page
    assert "kept float on CPU (ms)" in page and "0.058" in page


def test_explorer_link_carries_model_and_node_data(cpu_setup: tuple[Store, int, bytes], tmp_path: Path) -> None:
    pytest.importorskip("model_explorer", reason="ai-edge-model-explorer (the test extra) is not installed")
    from urllib.parse import parse_qs, urlparse

    store, vid, tflite = cpu_setup
    model = tmp_path / "m.tflite"
    model.write_bytes(tflite)
    paths = op_cost.write_node_data(op_cost.op_cost(store, vid), tmp_path / "nd")
    link = op_cost.explorer_link(model, paths)
    assert link is not None and link.startswith("http://localhost:8080/?data=")
    data = json.loads(parse_qs(urlparse(link).query)["data"][0])
    assert data["models"] == [{"url": str(model)}]
    assert data["nodeData"] == [str(p) for p in paths]


def test_graph_ops_mobilenet_v2_macs_match_the_paper() -> None:
    import tensorflow as tf
    import tf_keras as keras

    # a real architecture, untrained: MACs depend on shapes alone; float32 converts without calibration
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    ops = op_cost.graph_ops(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    macs = sum(o.macs for o in ops)
    # Sandler et al. 2018 (MobileNetV2, Table 3/4): 300 M multiply-adds at width 1.0, 224x224
    assert macs == pytest.approx(300e6, rel=0.01)
    convs = sum(op_cost.estimate_seconds(o) for o in ops if o.op_type in ("CONV_2D", "DEPTHWISE_CONV_2D"))
    assert convs / sum(op_cost.estimate_seconds(o) for o in ops) > 0.9

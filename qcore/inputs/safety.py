"""What an uploaded Keras model would run on load, read from its files without loading it.

A model file is a program: a `Lambda` layer stores Python bytecode that tf_keras runs on load,
a config may name any importable module, and a SavedModel's graph may read or write files when
it is traced for conversion. `check_model_file` reads the `.h5` model_config JSON, the `.keras`
zip's config.json, and a SavedModel's graph def, function library and Keras metadata as data,
and lists every reason to refuse; nothing of the model is imported, deserialized or run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

# TensorFlow ops a Keras model's SavedModel uses to compute (layers, activations, RNN loops, variables).
# Anything else, in particular file, process, Python and dataset ops, is refused.
SAFE_GRAPH_OPS = frozenset("""
Abs Acos Acosh Add AddN AddV2 All Any ApproximateEqual ArgMax ArgMin Asin Asinh Assert AssignAddVariableOp
AssignSubVariableOp AssignVariableOp Atan Atan2 Atanh AvgPool AvgPool3D BatchMatMul BatchMatMulV2 BatchMatMulV3
BatchToSpaceND BiasAdd BroadcastArgs BroadcastGradientArgs BroadcastTo Bucketize Cast Ceil CheckNumerics
ClipByValue Complex ComplexAbs Concat ConcatOffset ConcatV2 Const Conv2D Conv2DBackpropInput Conv3D
Conv3DBackpropInputV2 Cos Cosh CropAndResize Cumprod Cumsum CudnnRNN CudnnRNNBackpropV3 CudnnRNNCanonicalToParams
CudnnRNNV2 CudnnRNNV3 DepthToSpace DepthwiseConv2dNative DepthwiseConv2dNativeBackpropInput Dilation2D
DisableCopyOnRead Div DivNoNan Einsum Elu Empty EnsureShape Equal Erf Erfc Exp ExpandDims Expm1 ExtractImagePatches
Fill Floor FloorDiv FloorMod FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 Gather GatherNd GatherV2 Greater
GreaterEqual Identity IdentityN If Imag InvertPermutation IsFinite IsInf IsNan L2Loss LeakyRelu LeftShift Less
LessEqual Lgamma LinSpace Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr LRN MatMul MatrixBandPart
MatrixDiag MatrixDiagV3 MatrixSetDiagV3 Max MaxPool MaxPool3D MaxPoolV2 MaxPoolWithArgmax Maximum Mean Min
Minimum MirrorPad Mod Mul MulNoNan Neg NextAfter NoOp NotEqual OneHot OnesLike Pack Pad PadV2 PartitionedCall
Placeholder PlaceholderWithDefault Pow PreventGradient Prod QuantizeAndDequantizeV2 QuantizeAndDequantizeV3
QuantizeAndDequantizeV4 FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel
RandomStandardNormal RandomUniform RandomUniformInt Range Rank ReadVariableOp Real RealDiv Reciprocal Relu Relu6
Reshape ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor ResourceGather Reverse ReverseSequence
ReverseV2 RightShift Rint Round Rsqrt ScatterNd Select SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Sinh Size Slice
Snapshot Softmax Softplus Softsign SpaceToBatchND SpaceToDepth Split SplitV Sqrt Square SquaredDifference Squeeze
StatefulPartitionedCall StatelessIf StatelessRandomNormalV2 StatelessRandomUniformV2 StatelessRandomGetKeyCounter
StatelessWhile StopGradient StridedSlice Sub Sum Tan Tanh TensorListFromTensor TensorListGetItem TensorListLength
TensorListReserve TensorListSetItem TensorListStack TensorScatterUpdate Tile TopKV2 Transpose TruncateDiv
TruncateMod Unpack UnsortedSegmentSum VarHandleOp VarIsInitializedOp While Xdivy Xlog1py ZerosLike
""".split())
# the checkpoint ops tf.saved_model writes into its own save/restore functions; allowed only there
SAVER_OPS = frozenset("""
MergeV2Checkpoints RestoreV2 SaveV2 ShardedFilename StaticRegexFullMatch StringJoin
""".split())
_SAVER_FUNCTION = re.compile(r"^__inference__traced_(save|restore)_\d+$")
# tf_keras's TFOpLambda calls `tf.<function>` by name; these namespaces hold only math on tensors
_SAFE_TF_FUNCTION_ROOTS = ("math.", "nn.", "__operators__.", "linalg.", "image.resize", "compat.v1.transpose")
_SAFE_TF_FUNCTIONS = frozenset("""
reshape concat transpose expand_dims squeeze stack unstack split cast clip_by_value identity tile gather
gather_nd pad where zeros_like ones_like shape slice strided_slice broadcast_to einsum matmul reduce_mean
reduce_sum reduce_max reduce_min one_hot argmax argmin range fill stop_gradient convert_to_tensor
""".split())
# layer classes that carry code (bytecode or a looked-up function) and so are never allowed untrusted
_CODE_LAYERS = frozenset({"Lambda", "__lambda__"})
# Keras 3 and tf_keras name their own modules "keras..." in configs
_KERAS_MODULES = ("keras", "keras.", "tf_keras", "tf_keras.")
# an .h5/.keras config larger than this is not a model someone trains for a microcontroller-class NPU
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# the serialized-object keys Keras uses that are not classes
_VALUE_CLASSES = frozenset({"__tensor__", "__numpy__", "__tuple__", "__bytes__", "__typespec__", "TensorShape",
                            "__keras_tensor__", "__ellipsis__", "__slice__", "__dtype__", "function", "TypeSpec"})


def check_model_file(path: str | os.PathLike[str]) -> None:
    """Refuses a model that would run code, import modules or touch files when loaded or traced.

    Args:
        path: a `.keras`, `.h5`/`.hdf5` file or a SavedModel directory.

    Raises:
        QlabError: naming the file and every reason found (or that it cannot be inspected).
    """
    p = Path(path)
    try:
        reasons = model_risks(p)
    except _Unreadable as exc:
        raise QlabError(f"{p}: cannot read this model: {exc}") from None
    if reasons:
        shown = "; ".join(reasons[:8]) + (f"; and {len(reasons) - 8} more" if len(reasons) > 8 else "")
        raise QlabError(f"{p}: refused, this model would run code or touch files on load: {shown}. "
                        "Only an admin can mark an upload trusted")


def model_risks(path: Path) -> list[str]:
    """Every reason to refuse the model at `path` (empty when it is plain layers and math).

    Raises:
        _Unreadable: when the file cannot be inspected at all.
    """
    if path.is_dir():
        return _savedmodel_risks(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _h5_risks(path)
    if suffix == ".keras":
        return _keras_zip_risks(path)
    raise _Unreadable(f"unsupported model file {suffix!r}")


# ---------------------------------------------------------------- configs (JSON)
@cache
def _known_classes() -> frozenset[str]:
    """Class names the Keras packages themselves define in their public layer/initializer/... modules."""
    import inspect

    import keras
    import tf_keras

    names: set[str] = {"Sequential", "Functional", "Model", "TFOpLambda", "SlicingOpLambda"}
    for root in (tf_keras, keras):
        for sub in ("layers", "initializers", "regularizers", "constraints", "activations", "dtype_policies",
                    "mixed_precision", "models", "metrics", "losses", "optimizers"):
            module = getattr(root, sub, None)
            if module is None:
                continue
            for name in dir(module):
                obj = getattr(module, name, None)
                if inspect.isclass(obj) and obj.__module__.split(".")[0] in ("keras", "tf_keras"):
                    names.add(name)
    for name in ("DTypePolicy", "FloatDTypePolicy", "Policy", "InputSpec"):
        names.add(name)
    return frozenset(names - _CODE_LAYERS)


def config_risks(config: Any, where: str) -> list[str]:
    """Reasons to refuse a Keras model config (a parsed JSON tree)."""
    known = _known_classes()
    reasons: list[str] = []
    for node, trail in _dicts(config, where):
        cls = node.get("class_name")
        module = node.get("module")
        if isinstance(module, str) and module and not module.startswith(_KERAS_MODULES) and module != "builtins":
            reasons.append(f"{trail} names module {module!r} (only Keras's own modules are loaded)")
        if not isinstance(cls, str):
            continue
        if cls in _CODE_LAYERS or node.get("function_type") == "lambda":
            reasons.append(f"{trail} is a Lambda layer (stored Python code)")
        elif cls in ("TFOpLambda", "SlicingOpLambda"):
            fn = (node.get("config") or {}).get("function") if isinstance(node.get("config"), dict) else None
            if not isinstance(fn, str) or not (fn in _SAFE_TF_FUNCTIONS or fn.startswith(_SAFE_TF_FUNCTION_ROOTS)):
                reasons.append(f"{trail} calls tf.{fn} (not a plain math function)")
        elif cls == "function":
            registered = node.get("registered_name")
            if isinstance(registered, str) and ">" in registered:
                reasons.append(f"{trail} is a custom function {registered!r}")
        elif cls not in known and cls not in _VALUE_CLASSES:
            reasons.append(f"{trail} is a custom object {cls!r} (not a built-in Keras class)")
        registered = node.get("registered_name")
        if isinstance(registered, str) and ">" in registered and cls != "function":
            reasons.append(f"{trail} is a registered custom object {registered!r}")
    return _unique(reasons)


def _dicts(value: Any, trail: str) -> Iterator[tuple[dict[str, Any], str]]:
    stack: list[tuple[Any, str]] = [(value, trail)]
    while stack:
        item, here = stack.pop()
        if isinstance(item, dict):
            inner = item.get("config")
            name = item.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
            label = f"{here} > {name}" if isinstance(name, str) and "class_name" in item else here
            if "class_name" in item:
                yield item, label
            stack.extend((v, label) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, here) for v in item)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _parse_config(raw: bytes | str, where: str) -> Any:
    if len(raw) > MAX_CONFIG_BYTES:
        raise _Unreadable(f"{where} is {len(raw)} bytes, over {MAX_CONFIG_BYTES}")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _Unreadable(f"{where} is not valid JSON ({exc})") from None


class _Unreadable(Exception):
    pass


def _h5_risks(path: Path) -> list[str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except (OSError, ValueError) as exc:
        raise _Unreadable(f"not a readable HDF5 file ({exc})") from None
    if raw is None:
        raise _Unreadable("the .h5 holds no model_config (weights only?)")
    config = _parse_config(raw if isinstance(raw, bytes | str) else bytes(raw), "model_config")
    return config_risks(config, "model_config")


def _keras_zip_risks(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise _Unreadable(f"config.json unpacks to {info.file_size} bytes, over {MAX_CONFIG_BYTES}")
            raw = zf.read(info)
    except KeyError:
        raise _Unreadable("the .keras zip has no config.json") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _Unreadable(f"not a readable .keras zip ({exc})") from None
    config = _parse_config(raw, "config.json")
    return config_risks(config, "config.json")


# ---------------------------------------------------------------- SavedModel (protobufs)
def _savedmodel_risks(folder: Path) -> list[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    reasons: list[str] = []
    pb = folder / "saved_model.pb"
    if not pb.is_file():
        raise _Unreadable("no saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(pb.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise _Unreadable(f"saved_model.pb does not parse ({type(exc).__name__})") from None
    for mg in sm.meta_graphs:
        functions = {fn.signature.name: fn for fn in mg.graph_def.library.function}
        saver = {name for name in functions if _SAVER_FUNCTION.match(name)}
        for node in mg.graph_def.node:  # the top-level graph only wires variables and the saver
            if node.op not in SAFE_GRAPH_OPS and node.op not in SAVER_OPS:
                reasons.append(f"graph node {node.name!r} is a {node.op} op")
        for name, fn in functions.items():
            allowed = SAFE_GRAPH_OPS | SAVER_OPS if name in saver else SAFE_GRAPH_OPS
            for node in fn.node_def:
                if node.op in functions:  # a call of a library function by its name
                    callee = node.op
                    if callee in saver and name not in saver:
                        reasons.append(f"function {name!r} calls the checkpoint function {callee!r}")
                    continue
                if node.op not in allowed:
                    reasons.append(f"function {name!r} has a {node.op} op ({node.name!r})")
                for attr in node.attr.values():
                    for callee in _called(attr):
                        if callee in saver and name not in saver:
                            reasons.append(f"function {name!r} calls the checkpoint function {callee!r}")
    reasons.extend(_keras_metadata_risks(folder))
    return _unique(reasons)


def _called(attr: Any) -> list[str]:
    """Function names referenced by a NodeDef attribute (PartitionedCall f, While body, If branches)."""
    names = []
    if attr.HasField("func"):
        names.append(attr.func.name)
    if attr.HasField("list"):
        names.extend(f.name for f in attr.list.func)
    return names


def _keras_metadata_risks(folder: Path) -> list[str]:
    meta = folder / "keras_metadata.pb"
    if not meta.is_file():
        return []
    from tf_keras.protobuf import saved_metadata_pb2
    msg = saved_metadata_pb2.SavedMetadata()
    try:
        msg.ParseFromString(meta.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        return [f"keras_metadata.pb does not parse ({type(exc).__name__})"]
    reasons: list[str] = []
    for node in msg.nodes:
        try:
            data = _parse_config(node.metadata, f"keras_metadata node {node.node_path}")
        except _Unreadable as exc:
            reasons.append(str(exc))
            continue
        if isinstance(data, dict):
            reasons.extend(config_risks(data, f"keras_metadata {node.node_path}"))
    return reasons

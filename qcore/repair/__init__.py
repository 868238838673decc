"""Repairs a Keras model before quantization so it stays fully int8: BN folding, CLE, absorption, AdaRound, bias correction."""

from qcore.qtyping import (
    BiasMode,
    FloatDrift,
    RepairMethod,
    RepairResult,
    RepairSettings,
    RepairSkip,
    RepairStep,
)
from qcore.repair.engine import (
    METHODS,
    MethodSpec,
    check_recipe,
    cost,
    parse_methods,
    repair,
    steps_for,
    targetable_recipes,
)
from qcore.repair.graph import Draft, Graph, LayerInfo, Ref, read_graph, run_streams
from qcore.repair.readback import int8_weights

__all__ = [
    "METHODS",
    "BiasMode",
    "Draft",
    "FloatDrift",
    "Graph",
    "LayerInfo",
    "RepairMethod",
    "MethodSpec",
    "Ref",
    "RepairResult",
    "RepairSettings",
    "RepairStep",
    "RepairSkip",
    "check_recipe",
    "cost",
    "int8_weights",
    "parse_methods",
    "read_graph",
    "repair",
    "run_streams",
    "steps_for",
    "targetable_recipes",
]

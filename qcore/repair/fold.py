"""BatchNormalization folded into the Conv2D / DepthwiseConv2D / Dense right before it."""

from __future__ import annotations

import logging

import numpy as np

from qcore.qtyping import RepairMethod
from qcore.repair.layers import Act, Role, activation_of, role_of, weighted_problem
from qcore.repair.state import BnStats, RepairState, StepOutcome

log = logging.getLogger(__name__)


def _bn_arrays(state: RepairState, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """gamma, beta, moving mean, moving variance, epsilon (gamma 1 / beta 0 when the BN has none)."""
    conf = state.draft.params(name)
    ws = list(state.draft.weights[name])
    gamma = ws.pop(0) if conf.get("scale", True) else None
    beta = ws.pop(0) if conf.get("center", True) else None
    mean, var = ws[0], ws[1]
    return (
        np.ones_like(mean) if gamma is None else gamma,
        np.zeros_like(mean) if beta is None else beta,
        mean,
        var,
        float(conf.get("epsilon", 1e-3)),
    )


def _last_axis(conf: dict[str, object], rank: int | None) -> bool:
    axis = conf.get("axis", -1)
    axes = axis if isinstance(axis, list) else [axis]
    return len(axes) == 1 and isinstance(axes[0], int) and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _problem(state: RepairState, bn: str) -> tuple[str, str]:
    """(the layer before the BN, '') when it folds, else (that layer or the BN, the reason)."""
    graph = state.draft.graph
    info = graph.layers[bn]
    src = info.single_input
    if info.shared or src is None:
        return bn, "shared BatchNormalization (called more than once)"
    prev = graph.layers[src.layer]
    if role_of(prev) != Role.WEIGHTED:
        return bn, f"its input comes from {prev.name} ({prev.class_name}), not from a Conv2D, DepthwiseConv2D or Dense"
    problem = weighted_problem(prev, state.draft.kernel(prev.name))
    if problem:
        return prev.name, problem
    rank = 2 if prev.class_name == "Dense" else 4
    if not _last_axis(dict(info.config), rank):
        return bn, f"normalizes axis {info.config.get('axis')}, not the channel axis"
    if info.config.get("renorm"):
        return bn, "batch renormalization"
    readers = graph.consumers_of(prev.name)
    if readers != (bn,):
        others = ", ".join(r for r in readers if r != bn)
        return prev.name, f"its output also feeds {others}, so folding {bn} into it would change those too"
    if activation_of(prev) != Act.LINEAR:
        return prev.name, f"its fused activation {prev.config.get('activation')} comes before {bn}"
    return prev.name, ""


def fold(state: RepairState) -> StepOutcome:
    """Folds every BatchNormalization that directly follows a Conv2D / DepthwiseConv2D / Dense it alone reads.

    W' = W * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma / sqrt(var + eps) + beta;
    the BN layer is removed and its readers read the weighted layer. Its beta and gamma are kept
    for high-bias absorption and analytic bias correction. Other BNs are skipped by name.

    Returns:
        The folded layers, and one note per fold.
    """
    out = StepOutcome()
    draft = state.draft
    bns = [info.name for info in draft.graph if role_of(info) == Role.BATCHNORM]
    for bn in bns:
        prev, reason = _problem(state, bn)
        if reason:
            state.skip(RepairMethod.FOLD, bn if prev == bn else f"{prev} -> {bn}", reason)
            continue
        gamma, beta, mean, var, eps = _bn_arrays(state, bn)
        a = gamma / np.sqrt(var + eps)
        class_name = draft.graph.layers[prev].class_name
        kernel = draft.kernel(prev)
        if class_name == "DepthwiseConv2D":
            new_kernel = kernel * a.reshape(1, 1, kernel.shape[2], kernel.shape[3])
        else:
            new_kernel = kernel * a
        bias = draft.bias(prev)
        draft.set_kernel(prev, new_kernel)
        draft.set_bias(prev, (bias - mean) * a + beta)
        draft.remove(bn)
        state.bn_stats[prev] = BnStats(beta=beta.astype(np.float64).copy(), gamma=np.abs(gamma).astype(np.float64))
        out.changed.append(prev)
        out.notes.append(f"{bn} folded into {prev}")
        log.info("folded %s into %s", bn, prev)
    out.settings = {"folded": len(out.changed), "batchnorms": len(bns)}
    return out

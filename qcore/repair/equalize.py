"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, sections 4.1 and 4.2)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from qcore.qtyping import RepairMethod
from qcore.repair import layers as L
from qcore.repair.graph import MODEL_OUTPUT, LayerInfo, run_streams
from qcore.repair.layers import Act, Role
from qcore.repair.state import Pair, RepairState, StepOutcome

log = logging.getLogger(__name__)

_RESIDUAL = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})
_RESHAPING = frozenset({"Flatten", "Reshape", "Permute", "RepeatVector"})


def _blocker_reason(info: LayerInfo) -> str:
    """Why a chain of scalable layers stops at this layer, in words."""
    if info.nested_model:
        return "nested model: the repairs do not look inside it, so its layers keep their weights"
    if not info.builtin:
        return f"custom layer {info.class_name}: the repair does not know how it treats channels"
    if info.shared:
        return f"shared layer: called {len(info.calls)} times, so one set of weights serves several places"
    if info.class_name in _RESIDUAL:
        return (f"residual {info.class_name}: its inputs come from several branches, and scaling the channels "
                "of one would need every other branch scaled the same way")
    if info.class_name == "Concatenate":
        return "Concatenate: its output channels come from several layers, so no one pair of layers owns them"
    if info.class_name in ("Lambda", "TFOpLambda"):
        return f"{info.class_name}: arbitrary code, the repair cannot tell how it treats channels"
    if info.class_name in _RESHAPING:
        return f"{info.class_name} moves values between positions and channels"
    if info.class_name == "BatchNormalization":
        return "BatchNormalization left unfolded: an affine map with an offset is not positively homogeneous"
    if L.role_of(info) == Role.ACTIVATION and L.activation_of(info) == Act.OTHER:
        return f"activation {info.config.get('activation', info.class_name)} is not positively homogeneous"
    return f"{info.class_name} is not known to keep channels apart and scale with them"


def find_pairs(state: RepairState, method: str) -> list[Pair]:
    """Every (first, second) pair of weighted layers a repair can work across, blockers skipped by name.

    A pair is joined only through layers that keep channels apart and commute with a positive
    per-channel scale: ReLU, LeakyReLU, PReLU, linear, pooling, upsampling, zero padding, dropout.
    ReLU6 joins a pair for CLE when `replace_relu6` is on (CLE then makes it a ReLU), and never for
    absorption. Every tensor on the way must have exactly one reader.

    Args:
        state: the run's state (its draft's graph is read; blockers go to `state.skipped`).
        method: RepairMethod.CLE or RepairMethod.ABSORB, whose rules apply and under whose name skips are recorded.

    Returns:
        The pairs in graph order of their first layer.
    """
    graph = state.draft.graph
    pairs: list[Pair] = []
    relu6_ok = method == RepairMethod.CLE and state.settings.replace_relu6
    for first in graph:
        if L.role_of(first) != Role.WEIGHTED:
            continue
        problem = L.weighted_problem(first, state.draft.kernel(first.name))
        if problem:
            state.skip(method, first.name, problem)
            continue
        act = L.activation_of(first)
        if act == Act.OTHER or (act == Act.RELU6 and not relu6_ok):
            state.skip(method, first.name, _act_reason(first.config.get("activation"), method))
            continue
        pair = _follow(state, method, first.name, relu6_ok)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _act_reason(name: Any, method: str) -> str:
    if name == "relu6" or name == "ReLU6":
        if method == RepairMethod.ABSORB:
            return "ReLU6 after it: absorption is not exact through a clip; run cle first, which makes it a ReLU"
        return "ReLU6 after it and replace_relu6 is off"
    return f"its activation {name} is not positively homogeneous"


def _follow(state: RepairState, method: str, first: str, relu6_ok: bool) -> Pair | None:
    graph = state.draft.graph
    path: list[str] = []
    current = first
    while True:
        readers = graph.consumers_of(current)
        if readers == (MODEL_OUTPUT,) or not readers:
            return None
        if len(readers) > 1:
            shown = ", ".join(readers)
            state.skip(method, current, f"its output feeds {len(readers)} places ({shown}); scaling it for one "
                                        "would change the others")
            return None
        nxt = graph.layers[readers[0]]
        role = L.role_of(nxt)
        if nxt.shared:
            state.skip(method, nxt.name, _blocker_reason(nxt))
            return None
        if role == Role.WEIGHTED:
            problem = L.weighted_problem(nxt, state.draft.kernel(nxt.name))
            if problem:
                state.skip(method, nxt.name, problem)
                return None
            return Pair(first, nxt.name, tuple(path))
        if role == Role.ACTIVATION:
            act = L.activation_of(nxt)
            if act == Act.OTHER or (act == Act.RELU6 and not relu6_ok):
                name = "ReLU6" if act == Act.RELU6 else nxt.config.get("activation", nxt.class_name)
                state.skip(method, nxt.name, _act_reason(name, method))
                return None
        elif role == Role.PASS:
            if method == RepairMethod.ABSORB and nxt.class_name not in L.ABSORB_PASS:
                state.skip(method, nxt.name, f"{nxt.class_name} pads with zeros, not with the absorbed constant")
                return None
        else:
            state.skip(method, nxt.name, _blocker_reason(nxt))
            return None
        path.append(nxt.name)
        current = nxt.name


def _class(state: RepairState, name: str) -> str:
    return state.draft.graph.layers[name].class_name


def _has_bias(state: RepairState, name: str) -> bool:
    return bool(state.draft.params(name).get("use_bias", True))


def cle(state: RepairState) -> StepOutcome:
    """Cross-layer equalization, iterated to convergence.

    For each pair, output channel i of the first layer is divided by s_i = sqrt(r1_i / r2_i) (weights
    and bias) and input channel i of the second multiplied by s_i, where r1 / r2 are the channel's
    max |w| in each; both ranges become sqrt(r1_i * r2_i). Since ReLU(x / s) = ReLU(x) / s for s > 0,
    the float function is unchanged. A layer in two pairs (the depthwise of conv -> depthwise ->
    pointwise) is balanced by sweeping all pairs until no factor moves by more than the tolerance.
    ReLU6 is not homogeneous (the clip at 6 would move to 6 / s_i per channel), so inside an
    equalized pair it becomes a ReLU, as in the paper and AIMET; the float drift this causes is
    measured and reported.

    Returns:
        The layers changed, one note per ReLU6 replaced, and the settings used (pairs, sweeps).
    """
    out = StepOutcome()
    draft = state.draft
    pairs: list[Pair] = []
    for p in find_pairs(state, RepairMethod.CLE):
        r1 = L.out_ranges(_class(state, p.first), draft.kernel(p.first))
        r2 = L.in_ranges(_class(state, p.second), draft.kernel(p.second))
        if r1.shape == r2.shape:
            pairs.append(p)
        else:
            state.skip(RepairMethod.CLE, p.second, f"{p.first} has {r1.size} output channels but {p.second} reads {r2.size}")
    total = {p.first: np.ones(L.out_ranges(_class(state, p.first), draft.kernel(p.first)).shape) for p in pairs}
    iterations = 0
    worst = 0.0
    limit = math.log1p(state.settings.cle_tolerance)
    for iterations in range(1, state.settings.cle_max_iterations + 1):  # noqa: B007 (reported below)
        worst = 0.0
        for p in pairs:
            c1, c2 = _class(state, p.first), _class(state, p.second)
            k1 = draft.kernel(p.first).astype(np.float64)
            k2 = draft.kernel(p.second).astype(np.float64)
            r1, r2 = L.out_ranges(c1, k1), L.in_ranges(c2, k2)
            live = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[live] = np.sqrt(r1[live] / r2[live])
            draft.set_kernel(p.first, L.scale_out(c1, k1, 1.0 / s))
            if _has_bias(state, p.first):
                draft.set_bias(p.first, draft.bias(p.first).astype(np.float64) / s)
            draft.set_kernel(p.second, L.scale_in(c2, k2, s))
            total[p.first] *= s
            worst = max(worst, float(np.abs(np.log(s)).max(initial=0.0)))
        if worst < limit:
            break
    for p in pairs:
        stats = state.bn_stats.get(p.first)
        if stats is not None:
            stats.beta = stats.beta / total[p.first]
            stats.gamma = stats.gamma / total[p.first]
        out.changed.extend(n for n in (p.first, p.second) if n not in out.changed)
        _replace_relu6(state, p, out)
    spread = [float(total[p.first].max() / total[p.first].min()) for p in pairs if total[p.first].min() > 0]
    out.settings = {
        "tolerance": state.settings.cle_tolerance,
        "max_iterations": state.settings.cle_max_iterations,
        "iterations": iterations if pairs else 0,
        "converged": worst < limit,
        "pairs": [[p.first, p.second] for p in pairs],
        "replace_relu6": state.settings.replace_relu6,
        "largest_scale_ratio": max(spread, default=1.0),
    }
    if pairs and worst >= limit:
        out.notes.append(f"CLE stopped after {iterations} sweeps with a factor still {math.exp(worst):.4f}")
    log.info("CLE: %d pairs, %d sweeps", len(pairs), iterations)
    return out


def _replace_relu6(state: RepairState, pair: Pair, out: StepOutcome) -> None:
    draft = state.draft
    graph = draft.graph
    for name in (pair.first, *pair.path):
        info = graph.layers[name]
        if L.activation_of(info) != Act.RELU6:
            continue
        if info.class_name == "ReLU":
            draft.set_params(name, max_value=None)
        else:
            draft.set_params(name, activation="relu")
        state.relu6_replaced.append(name)
        out.notes.append(f"{name}: ReLU6 -> ReLU (equalized pair {pair.first} -> {pair.second})")


def _pre_activation_stats(state: RepairState, names: list[str]) -> dict[str, tuple[np.ndarray, ...]]:
    """(min, mean, std) per channel of each named layer's pre-activation on the calibration samples."""
    assert state.calibration is not None
    model = state.draft.build()
    stats: dict[str, tuple[np.ndarray, ...]] = {}

    def capture(layer: Any, xs: list[Any]) -> list[Any]:
        pre = L.linear(layer, xs[0], L.kernel_of(layer))
        if layer.use_bias:
            import tensorflow as tf

            pre = tf.nn.bias_add(pre, layer.bias)
        v = np.asarray(pre, dtype=np.float64).reshape(-1, pre.shape[-1])
        stats[layer.name] = (v.min(axis=0), v.mean(axis=0), v.std(axis=0))
        return [layer.activation(pre)]

    run_streams(model, [state.calibration], {n: capture for n in names})
    return stats


def absorb(state: RepairState) -> StepOutcome:
    """High-bias absorption: moves what the first layer's pre-activation never goes below into the next bias.

    For a pair joined by ReLU-like layers, c_i = max(0, beta_i - k * gamma_i) from the folded BN
    (k = absorb_sigmas), or from the calibration samples' pre-activation statistics when the layer
    had no BN; with samples and `absorb_clip_to_data`, c never exceeds the smallest pre-activation
    seen, so the change is exact on them. Through a linear join c = beta (exact always). Then
    b1 -= c and b2 += W2 c. The second layer must not zero-pad (a 3x3 'same' conv would see 0, not
    -c, on its border), and no ZeroPadding2D may sit in between: such pairs are skipped by name.

    Returns:
        The layers changed, one note per absorbing pair, and the settings used.
    """
    out = StepOutcome()
    draft = state.draft
    pairs = find_pairs(state, RepairMethod.ABSORB)
    usable: list[Pair] = []
    for p in pairs:
        second = draft.graph.layers[p.second]
        if not L.absorbs_exactly(second):
            size = "x".join(str(k) for k in second.config.get("kernel_size", ()))
            state.skip(RepairMethod.ABSORB, f"{p.first} -> {p.second}",
                       f"{p.second} pads its borders with zeros (padding 'same', kernel {size}): a constant moved "
                       "into its bias would be wrong on the border pixels")
            continue
        if p.first not in state.bn_stats and not state.has_data:
            state.skip(RepairMethod.ABSORB, f"{p.first} -> {p.second}",
                       f"no BatchNormalization statistics for {p.first} and no calibration samples")
            continue
        usable.append(p)
    data = _pre_activation_stats(state, [p.first for p in usable]) if usable and state.has_data else {}
    k = state.settings.absorb_sigmas
    moved = 0
    for p in usable:
        graph = draft.graph
        nonlinear = any(L.activation_of(graph.layers[n]) != Act.LINEAR
                        for n in (p.first, *p.path) if L.role_of(graph.layers[n]) != Role.PASS)
        stats = state.bn_stats.get(p.first)
        seen = data.get(p.first)
        if not nonlinear:
            c = stats.beta if stats is not None else seen[1] if seen is not None else None
        elif stats is not None:
            c = np.maximum(0.0, stats.beta - k * stats.gamma)
            if seen is not None and state.settings.absorb_clip_to_data:
                c = np.minimum(c, np.maximum(0.0, seen[0]))
        elif seen is not None:
            c = np.maximum(0.0, seen[1] - k * seen[2])
            if state.settings.absorb_clip_to_data:
                c = np.minimum(c, np.maximum(0.0, seen[0]))
        else:
            c = None
        if c is None or not np.any(np.asarray(c) != 0):
            continue
        c = np.asarray(c, dtype=np.float64)
        c1, c2 = _class(state, p.first), _class(state, p.second)
        draft.set_bias(p.first, draft.bias(p.first).astype(np.float64) - c)
        draft.set_bias(p.second, draft.bias(p.second).astype(np.float64)
                       + L.input_sum(c2, draft.kernel(p.second).astype(np.float64), c))
        if stats is not None:
            stats.beta = stats.beta - c
        moved += 1
        out.changed.extend(n for n in (p.first, p.second) if n not in out.changed)
        out.notes.append(f"{p.first} -> {p.second}: absorbed up to {float(np.max(c)):.4g} per channel "
                         f"({c1} -> {c2}, {'ReLU-like' if nonlinear else 'linear'} join)")
    out.settings = {
        "sigmas": k,
        "clip_to_data": state.settings.absorb_clip_to_data,
        "pairs": len(usable),
        "absorbed": moved,
        "statistics": "batchnorm+data" if data and state.bn_stats else "batchnorm" if state.bn_stats else "data",
    }
    log.info("absorption: %d of %d pairs", moved, len(usable))
    return out

"""AdaRound (Nagel et al. 2020): each kernel rounded up or down onto the converter's grid to keep its outputs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcore.qtyping import RepairMethod, RepairSettings
from qcore.repair import grid, simulate
from qcore.repair import layers as L
from qcore.repair.graph import run_streams
from qcore.repair.state import RepairState, StepOutcome

log = logging.getLogger(__name__)

# rows of layer inputs (pixels x samples) summed into one chunk of the Hessian, to bound memory
HESSIAN_CHUNK_ROWS = 65_536

# the rectified sigmoid's stretch (the paper's zeta and gamma): h(V) reaches 0 and 1 at finite V
ZETA, GAMMA = 1.1, -0.1
# Adam's constants (Kingma and Ba's defaults, as AIMET uses them)
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class Hessians:
    """The layer inputs' second moments the quadratic loss needs, from n rows of inputs.

    For Conv2D / Dense: qq = Xq^T Xq, qf = Xq^T Xf, ff = Xf^T Xf, each (K, K). For a depthwise
    layer they are per output channel, (channels, K, K).
    """

    qq: np.ndarray
    qf: np.ndarray
    ff: np.ndarray
    rows: int


def hessians(layer: Any, x_float: Any, x_quant: Any, chunk_rows: int) -> Hessians:
    """Accumulates the input moments chunk by chunk of samples, so the patches never all sit in memory.

    Args:
        layer: the Conv2D / DepthwiseConv2D / Dense being rounded.
        x_float, x_quant: its input in the float stream and in the quantized stream.
        chunk_rows: about how many patch rows one chunk holds.

    Returns:
        The moments and the number of rows they sum over.
    """
    n = int(x_float.shape[0])
    per_sample = max(1, int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) > 2 else 1)
    step = max(1, chunk_rows // per_sample)
    qq = qf = ff = None
    rows = 0
    depthwise = type(layer).__name__ == "DepthwiseConv2D"
    for i in range(0, n, step):
        pf = L.patches(layer, x_float[i : i + step]).astype(np.float64)
        pq = L.patches(layer, x_quant[i : i + step]).astype(np.float64)
        if depthwise:
            parts = (np.einsum("rkc,rlc->ckl", pq, pq), np.einsum("rkc,rlc->ckl", pq, pf),
                     np.einsum("rkc,rlc->ckl", pf, pf))
        else:
            parts = (pq.T @ pq, pq.T @ pf, pf.T @ pf)
        if qq is None or qf is None or ff is None:
            qq, qf, ff = parts
        else:
            qq, qf, ff = qq + parts[0], qf + parts[1], ff + parts[2]
        rows += pf.shape[0]
    assert qq is not None and qf is not None and ff is not None
    if depthwise:
        multiplier = int(layer.depth_multiplier)
        qq, qf, ff = (np.repeat(h, multiplier, axis=0) for h in (qq, qf, ff))
    return Hessians(qq, qf, ff, rows)


def _matmul(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """H @ W per output channel: (K, K) @ (K, O), or (O, K, K) with (K, O) column by column."""
    if h.ndim == 2:
        return h @ w
    return np.einsum("okl,lo->ko", h, w)


def _mse(h: Hessians, w_quant: np.ndarray, w_float: np.ndarray) -> float:
    """mean over rows and output channels of (x~ W~ - x W)^2, from the Hessians."""
    a = (w_quant * _matmul(h.qq, w_quant)).sum()
    b = (w_quant * _matmul(h.qf, w_float)).sum()
    c = (w_float * _matmul(h.ff, w_float)).sum()
    return float(max(a - 2 * b + c, 0.0) / (h.rows * w_float.shape[1]))


def optimise_rounding(w: np.ndarray, g: grid.Grid, h: Hessians, settings: RepairSettings) -> np.ndarray:
    """AdaRound on one kernel in matrix form (K, O).

    Minimises ||x~ (s q) - x W||^2 / (rows * O) + lambda * sum(1 - |2 h(V) - 1|^beta), with
    q = floor(W / s) + h(V), h the rectified sigmoid, beta annealed from 20 to 2 after a warm-up.
    The loss is quadratic in q, so each step is one (K, K) @ (K, O) product with the Hessian.

    Args:
        w: the float kernel as (K, O).
        g: its grid, with a scale per column (per-channel) or one scale.
        h: the input moments of the layer.
        settings: iterations, regularisation, beta schedule, learning rate.

    Returns:
        The integers q (K, O) in [-127, 127], each column's (or the tensor's) largest |w| kept at ±127.
    """
    # float32 in the loop: it halves the cost of the product that dominates, and the loss needs no more
    scale = np.broadcast_to(g.scale.reshape(1, -1) if g.scale.size > 1 else g.scale.reshape(1, 1),
                            w.shape).astype(np.float32)
    w = w.astype(np.float32)
    levels = np.zeros_like(w)
    np.divide(w, scale, out=levels, where=scale > 0)
    base = np.floor(levels)
    rest = np.clip(levels - base, 1e-6, 1 - 1e-6)
    pinned = (np.abs(levels) >= grid.QMAX - 1e-3) & (scale > 0)
    free = ~pinned & (scale > 0)
    # V such that h(V) equals the fractional part: the optimisation starts from the float weights
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
    m = np.zeros_like(v)
    s2 = np.zeros_like(v)
    qq = h.qq.astype(np.float32)
    target = _matmul(h.qf.astype(np.float32), w)
    norm = np.float32(2.0 / (h.rows * w.shape[1]))
    iterations = settings.adaround_iterations
    warmup = int(settings.adaround_warmup * iterations)
    beta_start, beta_end = settings.adaround_beta
    lr = settings.adaround_learning_rate
    for t in range(1, iterations + 1):
        sig = 1.0 / (1.0 + np.exp(-v))
        stretched = sig * (ZETA - GAMMA) + GAMMA
        hv = np.clip(stretched, 0.0, 1.0)
        q = base + hv
        inside = (q > -grid.QMAX) & (q < grid.QMAX)
        q = np.clip(q, -grid.QMAX, grid.QMAX)
        grad_w = (_matmul(qq, q * scale) - target) * norm
        grad_h = grad_w * scale * inside
        if t > warmup:
            progress = (t - warmup) / max(iterations - warmup, 1)
            beta = beta_end + (beta_start - beta_end) * (1.0 - progress)
            d = 2.0 * hv - 1.0
            grad_h = grad_h - settings.adaround_reg * beta * np.abs(d) ** (beta - 1.0) * np.sign(d) * 2.0
        grad_v = grad_h * sig * (1.0 - sig) * (ZETA - GAMMA) * ((stretched > 0) & (stretched < 1)) * free
        m = ADAM_B1 * m + (1 - ADAM_B1) * grad_v
        s2 = ADAM_B2 * s2 + (1 - ADAM_B2) * grad_v * grad_v
        v = v - lr * (m / (1 - ADAM_B1**t)) / (np.sqrt(s2 / (1 - ADAM_B2**t)) + ADAM_EPS)
    hard = (np.clip((1.0 / (1.0 + np.exp(-v))) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0) >= 0.5).astype(np.float32)
    q_final = np.clip(base + hard, -grid.QMAX, grid.QMAX)
    q_final = np.where(pinned, np.sign(levels) * grid.QMAX, q_final)
    return np.where(scale > 0, q_final, 0.0).astype(np.int32)


def _as_matrix(class_name: str, kernel: np.ndarray) -> np.ndarray:
    """(K, O): rows the patches' columns, columns the output channels."""
    return L.out_channels_view(class_name, kernel)


def adaround(state: RepairState) -> StepOutcome:
    """AdaRound on every weighted layer the converter quantizes as it is, layer by layer in graph order.

    Two streams run through the model: the float one and the one with the kernels rounded so far.
    Each layer's rounding minimises the error of its pre-activation output on the quantized stream's
    input against the float output (the paper's asymmetric reconstruction, without the activation
    in the loss, which makes the loss a quadratic form). The result is snapped onto the converter's
    grid, scale = max|w| / 127 per channel (or per tensor under a per-tensor recipe), with every
    channel's largest |w| kept at exactly ±127 steps so the converter recomputes the same scale.

    Returns:
        The layers rounded, and the settings used with each layer's output MSE under nearest
        rounding and under AdaRound.
    """
    out = StepOutcome()
    targets = state.quantized_layers(RepairMethod.ADAROUND)
    assert state.calibration is not None
    model = state.draft.build()
    report: dict[str, list[float]] = {}
    kernels: dict[str, np.ndarray] = {}
    total = max(len(targets), 1)

    def round_layer(layer: Any, xs: list[Any]) -> list[Any]:
        import tensorflow as tf

        started = time.perf_counter()
        class_name = type(layer).__name__
        kernel = np.asarray(L.kernel_of(layer), dtype=np.float64)
        per_channel = grid.per_channel_for(class_name, state.recipe)
        g = grid.grid_of(class_name, kernel, per_channel)
        h = hessians(layer, xs[0], xs[1], HESSIAN_CHUNK_ROWS)
        w = _as_matrix(class_name, kernel)
        mat_grid = grid.Grid(g.scale.reshape(-1) if g.scale.size > 1 else g.scale.reshape(()))
        q = optimise_rounding(w, mat_grid, h, state.settings).reshape(kernel.shape)
        snapped = g.snap(q)
        kernels[layer.name] = snapped
        nearest = g.snap(g.nearest(kernel)).astype(np.float64)
        report[layer.name] = [_mse(h, _as_matrix(class_name, nearest), w),
                              _mse(h, _as_matrix(class_name, snapped.astype(np.float64)), w)]
        bias = tf.constant(state.draft.bias(layer.name).astype(np.float32))
        y_float = L.finish(layer, L.linear(layer, xs[0], L.kernel_of(layer)), bias)
        y_quant = L.finish(layer, L.linear(layer, xs[1], tf.constant(snapped)), bias)
        state.progress(len(kernels) / total, f"AdaRound {len(kernels)}/{total}: {layer.name} "
                                             f"({time.perf_counter() - started:.1f} s)")
        log.info("AdaRound %s: mse %.3g (nearest) -> %.3g", layer.name, *report[layer.name])
        return [y_float, y_quant]

    x_quant, rounding = simulate.quantized_stream(state.calibration, state.draft.graph, state.recipe,
                                                  state.settings.simulate_activations)
    run_streams(model, [state.calibration, x_quant], {t: round_layer for t in targets}, rounding)
    for name, kernel in kernels.items():
        state.float_kernels.setdefault(name, state.draft.kernel(name).copy())
        state.draft.set_kernel(name, kernel)
        state.snapped.add(name)
        out.changed.append(name)
    before = sum(v[0] for v in report.values())
    after = sum(v[1] for v in report.values())
    out.settings = {
        "iterations": state.settings.adaround_iterations,
        "reg": state.settings.adaround_reg,
        "beta": list(state.settings.adaround_beta),
        "warmup": state.settings.adaround_warmup,
        "learning_rate": state.settings.adaround_learning_rate,
        "per_channel": state.recipe.per_channel,
        "simulate_activations": state.settings.simulate_activations,
        "layers": len(kernels),
        "mse_nearest": before,
        "mse_adaround": after,
        "per_layer_mse": report,
    }
    out.notes.append(f"layer output MSE summed over {len(kernels)} layers: {before:.4g} (nearest) -> {after:.4g}")
    return out

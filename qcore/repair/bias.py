"""Bias correction (Nagel et al. 2019, section 4.3): the output shift weight quantization causes, taken out of the bias."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from qcore.qtyping import BiasMode, QlabError, RepairMethod
from qcore.repair import grid, simulate
from qcore.repair import layers as L
from qcore.repair.graph import run_streams
from qcore.repair.layers import Act, Role
from qcore.repair.state import RepairState, StepOutcome

log = logging.getLogger(__name__)


def mode_for(state: RepairState) -> BiasMode:
    """The bias-correction mode a run will use (AUTO resolved by whether there are samples).

    Raises:
        QlabError: empirical correction asked for without calibration samples.
    """
    mode = BiasMode(state.settings.bias_mode)
    if mode == BiasMode.AUTO:
        return BiasMode.EMPIRICAL if state.has_data else BiasMode.ANALYTIC
    if mode == BiasMode.EMPIRICAL and not state.has_data:
        raise QlabError("empirical bias correction needs calibration samples; give some, or use bias_mode "
                        "'analytic' (from the BatchNormalization statistics)")
    return mode


def correct_bias(state: RepairState) -> StepOutcome:
    """Bias correction on every weighted layer the converter quantizes as it is.

    Empirical: the calibration samples run through two streams, the float model (with the kernels
    from before AdaRound, if it ran) and the model with every kernel rounded onto the recipe's grid
    (AdaRound's kernels where it ran, the converter's round-to-nearest elsewhere), each layer's bias
    already corrected upstream; with `simulate_activations` that stream also rounds every activation
    onto the range the converter calibrates. At each
    layer, b -= E[W~ x~] - E[W x] over samples and pixels: the shift this layer's rounding and
    everything before it cause. Analytic: the input of a layer whose producer had a folded BN is
    N(beta, gamma^2) through a ReLU / ReLU6 / linear, so E[x] has a closed form and
    b -= (W~ - W) E[x]; layers without such statistics are skipped by name.

    Returns:
        The layers whose bias changed, and the settings used (mode, count, largest change).

    Raises:
        QlabError: empirical correction asked for without calibration samples.
    """
    mode = mode_for(state)
    targets = state.quantized_layers(RepairMethod.BIAS)
    new_bias = _empirical(state, targets) if mode == BiasMode.EMPIRICAL else _analytic(state, targets)
    out = StepOutcome()
    largest = 0.0
    for name, bias in new_bias.items():
        old = state.draft.bias(name)
        largest = max(largest, float(np.abs(bias - old).max(initial=0.0)))
        state.draft.set_bias(name, bias)
        out.changed.append(name)
    out.settings = {"mode": str(mode), "corrected": len(new_bias), "largest_change": largest,
                    "simulate_activations": state.settings.simulate_activations and mode == BiasMode.EMPIRICAL}
    log.info("bias correction (%s): %d layers", mode, len(new_bias))
    return out


def _rounded(state: RepairState, class_name: str, kernel: np.ndarray) -> np.ndarray:
    return grid.quantized(class_name, kernel, grid.per_channel_for(class_name, state.recipe))


def _empirical(state: RepairState, targets: list[str]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    assert state.calibration is not None
    model = state.draft.build()
    out: dict[str, np.ndarray] = {}
    total = max(len(targets), 1)

    def correct(layer: Any, xs: list[Any]) -> list[Any]:
        class_name = type(layer).__name__
        kernel = np.asarray(L.kernel_of(layer))
        bias = state.draft.bias(layer.name).astype(np.float64)
        # after AdaRound the model's own kernels sit on the grid; the float reference is the kernel before
        float_kernel = state.float_kernels.get(layer.name)
        y_float = L.linear(layer, xs[0], L.kernel_of(layer) if float_kernel is None else tf.constant(float_kernel))
        y_quant = L.linear(layer, xs[1], tf.constant(_rounded(state, class_name, kernel)))
        shift = np.asarray(tf.reduce_mean(tf.cast(y_quant, tf.float64) - tf.cast(y_float, tf.float64),
                                          axis=list(range(y_float.shape.rank - 1))))
        out[layer.name] = (bias - shift).astype(np.float32)
        state.progress(len(out) / total, f"bias correction: {layer.name} ({len(out)}/{total})")
        b_float = tf.constant(bias.astype(np.float32))
        return [L.finish(layer, y_float, b_float), L.finish(layer, y_quant, tf.constant(out[layer.name]))]

    x_quant, after = simulate.quantized_stream(state.calibration, state.draft.graph, state.recipe,
                                               state.settings.simulate_activations)
    run_streams(model, [state.calibration, x_quant], {t: correct for t in targets}, after)
    return out


# ---------------------------------------------------------------- analytic


def _relu_mean(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """E[max(0, z)] for z ~ N(mu, sigma^2): mu Phi(mu / sigma) + sigma phi(mu / sigma)."""
    safe = np.where(sigma > 0, sigma, 1.0)
    t = mu / safe
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return np.where(sigma > 0, mu * cdf + sigma * pdf, np.maximum(mu, 0.0))


def _input_mean(state: RepairState, name: str) -> tuple[np.ndarray | None, str]:
    """E[x] per input channel of `name` from the BN statistics upstream, or None and why not."""
    graph = state.draft.graph
    src = graph.layers[name].single_input
    clip: float | None = None
    rectified = False
    while src is not None:
        info = graph.layers[src.layer]
        role = L.role_of(info)
        if role == Role.WEIGHTED:
            stats = state.bn_stats.get(info.name)
            if stats is None:
                return None, f"its input comes from {info.name}, which had no BatchNormalization to take statistics from"
            act = L.activation_of(info)
            if act == Act.OTHER:
                return None, f"{info.name}'s activation {info.config.get('activation')} has no closed-form mean here"
            if act == Act.RELU6:
                clip = 6.0 if clip is None else min(clip, 6.0)
            rectified = rectified or act in (Act.RELU, Act.RELU6)
            mu, sigma = stats.beta, stats.gamma
            if not rectified:
                return mu, ""
            mean = _relu_mean(mu, sigma)
            if clip is not None:
                mean = mean - _relu_mean(mu - clip, sigma)
            return mean, ""
        if role == Role.ACTIVATION:
            act = L.activation_of(info)
            negative_slope = float(info.config.get("negative_slope") or 0.0)
            if act == Act.OTHER or info.class_name in ("LeakyReLU", "PReLU") or negative_slope:
                return None, f"{info.name} ({info.class_name}) has no closed-form mean here"
            if act == Act.RELU6:
                top = info.config.get("max_value")
                value = float(top) if top is not None else 6.0
                clip = value if clip is None else min(clip, value)
            rectified = rectified or act != Act.LINEAR
        elif not (role == Role.PASS and info.class_name in L.MEAN_PASS):
            return None, f"its input passes through {info.name} ({info.class_name}), whose output mean is not modelled"
        src = info.single_input
    return None, "its input is the model input, which has no BatchNormalization statistics"


def _analytic(state: RepairState, targets: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in targets:
        mean, reason = _input_mean(state, name)
        if mean is None:
            state.skip(RepairMethod.BIAS, name, f"analytic bias correction: {reason}")
            continue
        class_name = state.draft.graph.layers[name].class_name
        kernel = state.draft.kernel(name).astype(np.float64)
        reference = state.float_kernels.get(name, kernel).astype(np.float64)
        error = _rounded(state, class_name, kernel).astype(np.float64) - reference
        if mean.shape[0] != L.in_ranges(class_name, kernel).shape[0]:
            state.skip(RepairMethod.BIAS, name, "analytic bias correction: its input channels do not match the statistics")
            continue
        out[name] = (state.draft.bias(name).astype(np.float64) - L.input_sum(class_name, error, mean)).astype(np.float32)
    return out

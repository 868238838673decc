"""Repairs before quantization: a MobileNet-like network that fails per-tensor int8 comes back, a healthy one
does not get worse, the float function is kept where the maths says so, AdaRound's grid is the converter's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcore.engines.tf import convert
from qcore.qtyping import Dataset, LoadedModel, QlabError
from qcore.recipes import get_recipe
from qcore.repair import RepairSettings, int8_weights, repair
from qcore.repair.grid import QMAX, grid_of
from qcore.tflite.evaluate import evaluate_tflite
from qcore.tflite.inspection import inspect, npu_verdict

CALIBRATION = 128
# the failing network's per-tensor int8 must lose at least this much before repair, and be within
# TOLERANCE of float after (the bench's target is 1 point; 360 test digits make a point 3.6 samples)
FAILURE = 0.30
TOLERANCE = 0.02
# "equal" float outputs: float32 kernels of the same function, summed in another order
FLOAT_RTOL = 1e-4
# AdaRound steps in tests: enough to move roundings, far fewer than the default
FAST = RepairSettings(adaround_iterations=150)


def _loaded(net: object, name: str, shape: tuple[int | None, ...], out: int = 10) -> LoadedModel:
    return LoadedModel(name, "", "h5", net, shape, (None, out), 2)


def _accuracy(tflite: bytes, digits: Dataset) -> float:
    return evaluate_tflite(tflite, digits).accuracy


def _keras_accuracy(model: LoadedModel, digits: Dataset) -> float:
    out = np.asarray(model.keras_model(digits.test_inputs(), training=False))
    return float((out.argmax(axis=1) == digits.y_test).mean())


def _weights(model: LoadedModel) -> dict[str, list[np.ndarray]]:
    return {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.keras_model.layers}


# ---------------------------------------------------------------- the failure and its repair


def test_repair_cle_bias_brings_failing_per_tensor_int8_back_fully_integer(spread: LoadedModel, digits: Dataset):
    calibration = digits.calibration(CALIBRATION)
    float_acc = _keras_accuracy(spread, digits)
    before = _accuracy(convert(spread, "int8-per-tensor", calibration), digits)
    result = repair(spread, ["cle", "bias"], calibration, recipe="int8-per-tensor")
    tflite = convert(result.model, "int8-per-tensor", calibration)
    after = _accuracy(tflite, digits)
    assert float_acc > 0.9
    assert before < float_acc - FAILURE, (float_acc, before)
    assert after >= float_acc - TOLERANCE, (float_acc, before, after)
    verdict = npu_verdict(tflite)
    assert verdict.ready and verdict.n_float_ops == 0, verdict.summary
    assert inspect(tflite).integer_only
    assert not any(t.per_channel for t in inspect(tflite).tensors if t.is_constant and t.dtype == "int8"
                   and len(t.shape) == 4)
    assert result.label == "int8-per-tensor + CLE + bias"
    assert [s.method for s in result.steps] == ["fold", "cle", "bias"] and result.steps[0].implied


def test_repair_adaround_on_failing_network_stays_close_to_float(spread: LoadedModel, digits: Dataset):
    calibration = digits.calibration(CALIBRATION)
    float_acc = _keras_accuracy(spread, digits)
    messages: list[tuple[float, str]] = []
    result = repair(spread, ["cle", "adaround"], calibration, recipe="int8-per-tensor", settings=FAST,
                    progress=lambda f, m: messages.append((f, m)))
    after = _accuracy(convert(result.model, "int8-per-tensor", calibration), digits)
    assert after >= float_acc - TOLERANCE
    rounds = [m for _, m in messages if m.startswith("AdaRound ")]
    assert len(rounds) == 6 and rounds[0].startswith("AdaRound 1/6: stem")  # stem, 2 x (dw, pw), logits
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0
    step = result.steps[-1]
    assert step.settings["mse_adaround"] < step.settings["mse_nearest"]


def test_repair_healthy_sequential_network_gets_no_worse(demo: LoadedModel, digits: Dataset):
    calibration = digits.calibration(CALIBRATION)
    before = _accuracy(convert(demo, "int8-per-tensor", calibration), digits)
    result = repair(demo, ["cle", "adaround", "bias"], calibration, recipe="int8-per-tensor", settings=FAST)
    after = _accuracy(convert(result.model, "int8-per-tensor", calibration), digits)
    assert after >= before - 0.01, (before, after)
    # the demo is Conv -> MaxPool -> Flatten -> Dense: CLE has no pair, and says where the chain stops
    assert any(s.method == "cle" and s.layer == "flatten" and "Flatten" in s.reason for s in result.skipped)
    assert result.steps[1].settings["pairs"] == []


def test_repair_keeps_float_function_healthy_network(mobilenet_like: LoadedModel, digits: Dataset):
    x = digits.test_inputs()
    reference = np.asarray(mobilenet_like.keras_model(x))
    result = repair(mobilenet_like, ["cle"], digits.calibration(CALIBRATION), recipe="int8")
    got = np.asarray(result.model.keras_model(x))
    # this network's ReLU6 never clips on digits, so replacing it changes nothing measurable
    assert np.abs(got - reference).max() <= FLOAT_RTOL * np.abs(reference).max()
    assert set(result.relu6_replaced) == {"stem_relu", "b1_pw_relu"}


# ---------------------------------------------------------------- the float function


@pytest.mark.parametrize("methods", [["fold"], ["cle"], ["cle", "absorb"]])
def test_fold_cle_absorb_preserve_float_predictions(spread: LoadedModel, digits: Dataset, methods: list[str]):
    x = digits.test_inputs()
    reference = np.asarray(spread.keras_model(x))
    result = repair(spread, methods, digits.calibration(CALIBRATION), recipe="int8-per-tensor")
    got = np.asarray(result.model.keras_model(x))
    assert np.abs(got - reference).max() <= FLOAT_RTOL * np.abs(reference).max()
    assert result.drift is not None and result.drift.max_rel <= FLOAT_RTOL
    names = {layer.name for layer in result.model.keras_model.layers}
    assert not any("_bn" in n for n in names), "every BN here follows a conv it alone reads"
    if "cle" in methods:
        # CLE undoes the injected spread: the depthwise ranges are within a small factor of each other
        kernel = result.model.keras_model.get_layer("b1_dw").get_weights()[0]
        ranges = np.abs(kernel).max(axis=(0, 1, 3))
        assert ranges.max() / ranges.min() < 30
        before = np.abs(spread.keras_model.get_layer("b1_dw").get_weights()[0]).max(axis=(0, 1, 3))
        gamma, _, _, var = spread.keras_model.get_layer("b1_dw_bn").get_weights()
        folded = before * np.abs(gamma) / np.sqrt(var + 1e-3)
        assert folded.max() / folded.min() > 100


def _absorbing_net() -> LoadedModel:
    """Conv -> BN(beta well above 3 gamma) -> ReLU -> 1x1 conv -> BN -> Dense: something to absorb, untrained."""
    import tf_keras as keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    x = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(x))
    x = L.Conv2D(5, 1, name="c2")(x)
    x = L.ReLU(name="r2")(L.BatchNormalization(name="bn2")(x))
    out = L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(x))
    net = keras.Model(inp, out)
    for name, beta in (("bn1", 4.0), ("bn2", 3.5)):
        bn = net.get_layer(name)
        gamma, _, mean, var = bn.get_weights()
        bn.set_weights([gamma * 0.5, np.full_like(gamma, beta), mean, var])
    return _loaded(net, "absorbing", (None, 8, 8, 1), 3)


def test_absorb_moves_bias_into_next_layer_and_keeps_float_predictions(digits: Dataset):
    model = _absorbing_net()
    x = digits.calibration(64)[..., None]
    reference = np.asarray(model.keras_model(x))
    result = repair(model, ["absorb"], x, recipe="int8")
    step = result.steps[-1]
    assert step.method == "absorb" and step.settings["absorbed"] == 2
    got = np.asarray(result.model.keras_model(x))
    assert np.abs(got - reference).max() <= FLOAT_RTOL * np.abs(reference).max()
    # c1's pre-activation moved down by beta - 3 gamma = 2.5 per channel: the activation range shrinks by that
    net = model.keras_model
    before = np.asarray(net.get_layer("bn1")(net.get_layer("c1")(x), training=False)).reshape(-1, 6)
    after = np.asarray(result.model.keras_model.get_layer("c1")(x)).reshape(-1, 6)
    np.testing.assert_allclose(before.min(axis=0) - after.min(axis=0), 2.5, rtol=1e-4)
    # without samples the 3-sigma rule from BN alone decides (the paper's data-free version)
    free = repair(model, ["absorb"], None, recipe="int8")
    assert free.drift is None and free.steps[-1].settings["absorbed"] == 2


def _clipping_net() -> LoadedModel:
    """Conv -> BN -> ReLU6 -> Conv -> GAP -> Dense with BN set so the ReLU6 clips often (untrained)."""
    import tf_keras as keras

    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    x = L.ReLU(6.0, name="clip")(L.BatchNormalization(name="bn1")(x))
    x = L.Conv2D(8, 3, padding="same", name="c2", activation="relu6")(x)
    out = L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(x))
    net = keras.Model(inp, out)
    bn = net.get_layer("bn1")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * 6.0, beta + 5.0, mean, var])
    return _loaded(net, "clipping", (None, 8, 8, 1), 4)


def test_cle_relu6_drift_is_reported_and_matches_measured(digits: Dataset):
    model = _clipping_net()
    x = digits.calibration(64)[..., None]
    pre = np.asarray(model.keras_model.get_layer("bn1")(model.keras_model.get_layer("c1")(x), training=False))
    assert (pre > 6).mean() > 0.05, "the test needs a ReLU6 that clips"
    result = repair(model, ["cle"], x, recipe="int8-per-tensor")
    assert result.relu6_replaced == ("clip", "c2")  # a ReLU6 layer, and a Conv2D's fused relu6
    assert any("clip: ReLU6 -> ReLU" in n for n in result.steps[-1].notes)
    measured = np.abs(np.asarray(result.model.keras_model(x)) - np.asarray(model.keras_model(x)))
    assert result.drift is not None and result.drift.max_abs > 1e-3
    assert result.drift.max_abs == pytest.approx(float(measured.max()), rel=1e-5)
    assert result.drift.mean_abs == pytest.approx(float(measured.mean()), rel=1e-5)
    # with replacement off, the pair is skipped by name and the float function is kept
    kept = repair(model, ["cle"], x, recipe="int8-per-tensor", settings=RepairSettings(replace_relu6=False))
    assert kept.relu6_replaced == () and kept.drift is not None and kept.drift.max_rel <= FLOAT_RTOL
    assert {s.layer for s in kept.skipped if "ReLU6" in s.reason} == {"clip", "c2"}


def _weights_on_grid(model: LoadedModel, recipe: str) -> object:
    """A copy of the model whose kernels are rounded the way the converter rounds them (activations stay float)."""
    import tf_keras as keras

    from qcore.repair.grid import quantized

    net = keras.models.clone_model(model.keras_model)
    net.set_weights(model.keras_model.get_weights())
    for layer in net.layers:
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense"):
            ws = layer.get_weights()
            layer.set_weights([quantized(type(layer).__name__, ws[0], get_recipe(recipe).per_channel), *ws[1:]])
    return net


def test_empirical_bias_correction_removes_the_mean_shift_of_rounded_weights(spread: LoadedModel, digits: Dataset):
    calibration = digits.calibration(CALIBRATION)
    plain = repair(spread, ["cle"], calibration, recipe="int8-per-tensor")
    corrected = repair(spread, ["cle", "bias"], calibration, recipe="int8-per-tensor")
    target = np.asarray(plain.model.keras_model(calibration)).mean(axis=0)
    before = np.asarray(_weights_on_grid(plain.model, "int8-per-tensor")(calibration)).mean(axis=0)
    after = np.asarray(_weights_on_grid(corrected.model, "int8-per-tensor")(calibration)).mean(axis=0)
    # the logits are linear in the last bias, so its correction makes their mean the float one exactly
    assert np.abs(before - target).max() > 1e-3
    assert np.abs(after - target).max() <= 1e-4 * np.abs(target).max()


def test_simulated_activation_grid_is_the_converters(spread: LoadedModel, digits: Dataset):
    from qcore.repair.simulate import grid_params
    from qcore.tflite.litert_io import make_interpreter

    calibration = digits.calibration(CALIBRATION)
    it = make_interpreter(convert(spread, "int8", calibration))
    logits = np.asarray(spread.keras_model(calibration))
    for detail, values in ((it.get_input_details()[0], calibration), (it.get_output_details()[0], logits)):
        scale, zero = detail["quantization"]
        want_scale, want_zero = grid_params(float(values.min()), float(values.max()), 8)
        assert scale == pytest.approx(want_scale, rel=1e-5) and zero == want_zero


def test_bias_and_adaround_with_simulated_activations(spread: LoadedModel, digits: Dataset):
    calibration = digits.calibration(CALIBRATION)
    settings = RepairSettings(adaround_iterations=FAST.adaround_iterations, simulate_activations=True)
    result = repair(spread, ["cle", "adaround", "bias"], calibration, recipe="int8-per-tensor", settings=settings)
    assert result.steps[-1].settings["simulate_activations"] and result.steps[-2].settings["simulate_activations"]
    after = _accuracy(convert(result.model, "int8-per-tensor", calibration), digits)
    assert after >= _keras_accuracy(spread, digits) - TOLERANCE


# ---------------------------------------------------------------- AdaRound on the converter's grid


@pytest.mark.parametrize("recipe", ["int8", "int8-per-tensor"])
def test_adaround_snapped_weights_are_the_converters_integers(spread: LoadedModel, digits: Dataset, recipe: str):
    calibration = digits.calibration(CALIBRATION)
    plain = repair(spread, ["cle"], calibration, recipe=recipe)
    rounded = repair(spread, ["cle", "adaround"], calibration, recipe=recipe, settings=FAST)
    per_channel = get_recipe(recipe).per_channel
    specs, expected, moved = [], {}, 0
    for layer in rounded.model.keras_model.layers:
        if type(layer).__name__ not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        kernel = layer.get_weights()[0]
        g = grid_of(type(layer).__name__, kernel, per_channel)
        q = g.nearest(kernel)
        np.testing.assert_array_equal(g.snap(q), kernel)  # on the grid, exactly
        top = np.abs(q).max(axis=tuple(range(q.ndim - 1)) if per_channel else None)
        assert np.all(top == QMAX)  # each channel's (or the tensor's) largest |w| pinned at 127 steps
        before = plain.model.keras_model.get_layer(layer.name).get_weights()[0]
        moved += int((grid_of(type(layer).__name__, before, per_channel).nearest(before) != q).sum())
        specs.append((layer.name, type(layer).__name__, kernel.shape))
        expected[layer.name] = q
    got = int8_weights(convert(rounded.model, recipe, calibration), specs)
    assert sorted(got) == sorted(expected)
    for name, q in expected.items():
        np.testing.assert_array_equal(got[name], q, err_msg=name)
    assert moved > 0, "AdaRound chose some roundings other than nearest"


@pytest.mark.slow
def test_adaround_snapped_weights_are_ai_edge_quantizers_integers(spread: LoadedModel, digits: Dataset):
    from qcore.engines import aeq

    calibration = digits.calibration(CALIBRATION)
    for recipe in ("int8", "int8-per-tensor"):
        result = repair(spread, ["cle", "adaround"], calibration, recipe=recipe, settings=FAST)
        per_channel = get_recipe(recipe).per_channel
        layers = [lay for lay in result.model.keras_model.layers
                  if type(lay).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
        specs = [(lay.name, type(lay).__name__, lay.get_weights()[0].shape) for lay in layers]
        got = int8_weights(aeq.convert(result.model, recipe, calibration), specs)
        assert len(got) == len(layers)
        for lay in layers:
            kernel = lay.get_weights()[0]
            np.testing.assert_array_equal(got[lay.name], grid_of(type(lay).__name__, kernel, per_channel).nearest(kernel))


# ---------------------------------------------------------------- structures the repairs skip


def _branchy_net() -> LoadedModel:
    """Two convs into a residual Add, two convs into a Concatenate, and one plain conv -> ReLU -> conv pair."""
    import tf_keras as keras

    keras.utils.set_random_seed(7)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(4, 3, padding="same", name="res_a")(inp)
    b = L.Conv2D(4, 3, padding="same", name="res_b")(inp)
    x = L.Add(name="residual")([a, b])
    c = L.Conv2D(3, 1, name="cat_a", activation="relu")(x)
    d = L.Conv2D(3, 1, name="cat_b", activation="relu")(x)
    x = L.Concatenate(name="concat")([c, d])
    x = L.Conv2D(6, 3, padding="same", name="plain_1", activation="relu")(x)
    x = L.Conv2D(6, 1, name="plain_2")(x)
    out = L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(x))
    net = keras.Model(inp, out)
    w = net.get_layer("plain_1").get_weights()
    w[0] = w[0] * np.array([100.0, 1, 1, 1, 1, 0.01], dtype=np.float32)  # something for CLE to equalize
    net.get_layer("plain_1").set_weights(w)
    return _loaded(net, "branchy", (None, 8, 8, 1), 2)


def test_residual_add_and_concatenate_are_skipped_by_name_and_untouched(digits: Dataset):
    model = _branchy_net()
    x = digits.calibration(32)[..., None]
    before = _weights(model)
    result = repair(model, ["cle", "absorb"], x, recipe="int8-per-tensor")
    reasons = {(s.method, s.layer): s.reason for s in result.skipped}
    assert "residual Add" in reasons[("cle", "residual")]
    assert "Concatenate" in reasons[("cle", "concat")]
    after = _weights(result.model)
    for name in ("res_a", "res_b", "cat_a", "cat_b"):
        for w0, w1 in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(w0, w1, err_msg=name)
    assert ["plain_1", "plain_2"] in result.steps[1].settings["pairs"]
    assert not any(name in pair for pair in result.steps[1].settings["pairs"]
                   for name in ("res_a", "res_b", "cat_a", "cat_b"))
    spread_before = np.abs(before["plain_1"][0]).max(axis=(0, 1, 2))
    spread_after = np.abs(after["plain_1"][0]).max(axis=(0, 1, 2))
    assert spread_after.max() / spread_after.min() < spread_before.max() / spread_before.min() / 10
    assert result.drift is not None and result.drift.max_rel <= FLOAT_RTOL


def test_layer_with_several_consumers_and_unfolded_bn_are_skipped_by_name(digits: Dataset):
    import tf_keras as keras

    L = keras.layers
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", name="fan_out")(inp)
    y = L.BatchNormalization(name="bn_y")(x)
    z = L.Conv2D(4, 1, name="reader")(x)
    out = L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(L.Add(name="join")([y, z])))
    model = _loaded(keras.Model(inp, out), "fan", (None, 8, 8, 1), 2)
    result = repair(model, ["cle", "bias"], digits.calibration(16)[..., None], recipe="int8")
    reasons = {(s.method, s.layer): s.reason for s in result.skipped}
    assert "also feeds reader" in reasons[("fold", "fan_out -> bn_y")]
    assert "feeds 2 places" in reasons[("cle", "fan_out")]
    assert "BatchNormalization reads its output" in reasons[("bias", "fan_out")]
    assert "bn_y" in {layer.name for layer in result.model.keras_model.layers}


def test_cle_passes_prelu_leaky_pooling_dropout_and_depth_multiplier_keeping_float(digits: Dataset):
    import tf_keras as keras

    keras.utils.set_random_seed(11)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    x = L.PReLU(name="prelu")(L.Conv2D(4, 3, padding="same", name="m1")(inp))
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="valid", name="dwm")(x)
    x = L.MaxPooling2D(name="pool")(L.LeakyReLU(name="leaky")(x))
    x = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(6, 1, name="m2")(x))
    x = L.Dropout(0.3, name="drop")(L.Dense(5, activation="relu", name="d1")(x))
    model = _loaded(keras.Model(inp, L.Dense(2, name="d2")(x)), "mixed", (None, 8, 8, 1), 2)
    x = digits.calibration(32)[..., None]
    result = repair(model, ["cle", "absorb"], x, recipe="int8")
    assert result.steps[1].settings["pairs"] == [["m1", "dwm"], ["dwm", "m2"], ["m2", "d1"], ["d1", "d2"]]
    assert result.skipped == () and result.drift is not None and result.drift.max_rel <= FLOAT_RTOL


def test_lambda_tfoplambda_shared_custom_and_nested_layers_are_rebuilt_and_skipped_by_name(digits: Dataset):
    import tf_keras as keras

    L = keras.layers

    class Scale(L.Layer):
        def call(self, t: object) -> object:
            return t * 3.0

    inp = keras.Input((8, 8, 1))
    shared = L.Conv2D(1, 1, name="shared")
    x = shared(L.ReLU(name="r0")(shared(inp)))
    x = L.Lambda(lambda t: t * 2.0, name="lam")(L.Conv2D(4, 3, padding="same", name="c1")(x))
    x = L.Conv2D(4, 1, name="c2", activation="relu")(x) * 0.5
    x = Scale(name="custom")(L.Conv2D(4, 1, name="c3", activation="relu")(x))
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, L.Conv2D(3, 1, name="inner_conv")(inner_in), name="backbone")
    out = L.GlobalAveragePooling2D(name="gap")(inner(L.Conv2D(4, 1, name="c4")(x)))
    model = _loaded(keras.Model(inp, out), "odd", (None, 8, 8, 1), 3)
    x = digits.calibration(16)[..., None]
    result = repair(model, ["cle", "absorb", "bias"], x, recipe="int8")
    reasons = {(s.method, s.layer): s.reason for s in result.skipped}
    assert "shared layer: called 2 times" in reasons[("cle", "shared")]
    assert "shared layer" in reasons[("bias", "shared")]
    assert reasons[("cle", "lam")].startswith("Lambda")
    # tf_keras names the `* 0.5` op layer itself (tf.math.multiply, _1, ... per session)
    assert any(m == "cle" and layer.startswith("tf.math.multiply") and r.startswith("TFOpLambda")
               for (m, layer), r in reasons.items())
    assert reasons[("cle", "custom")].startswith("custom layer Scale")
    assert reasons[("cle", "backbone")].startswith("nested model") and ("all", "backbone") in reasons
    got = np.asarray(result.model.keras_model(x))
    assert got.shape == (16, 3) and result.drift is not None and result.drift.max_rel < 0.05


# ---------------------------------------------------------------- the record, data-free use, the original model


def test_repair_result_is_json_and_the_original_model_is_untouched(spread: LoadedModel, digits: Dataset):
    before = _weights(spread)
    result = repair(spread, "bias,cle", digits.calibration(CALIBRATION), recipe="int8-per-tensor")
    record = json.loads(json.dumps(result.to_dict()))
    assert record["label"] == "int8-per-tensor + CLE + bias" and record["methods"] == ["cle", "bias"]
    assert [s["method"] for s in record["steps"]] == ["fold", "cle", "bias"]
    assert record["steps"][2]["settings"]["mode"] == "empirical"
    assert set(result.timings) == {"fold", "cle", "bias"} and all(t >= 0 for t in result.timings.values())
    for name, ws in _weights(spread).items():
        for w0, w1 in zip(before[name], ws, strict=True):
            np.testing.assert_array_equal(w0, w1, err_msg=name)
    assert result.model.keras_model is not spread.keras_model


def test_bias_without_samples_is_analytic_from_bn(spread: LoadedModel, digits: Dataset):
    calibration = digits.calibration(CALIBRATION)
    result = repair(spread, ["cle", "bias"], None, recipe="int8-per-tensor")
    assert result.drift is None and result.steps[-1].settings["mode"] == "analytic"
    reasons = {s.layer: s.reason for s in result.skipped if s.method == "bias"}
    assert "hwc (Reshape)" in reasons["stem"]  # its input comes from the model input through a Reshape
    assert result.steps[-1].settings["corrected"] == 5
    after = _accuracy(convert(result.model, "int8-per-tensor", calibration), digits)
    assert after >= _keras_accuracy(spread, digits) - TOLERANCE


def test_repair_keras3_model_is_rebuilt_in_tf_keras(digits: Dataset):
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp)
    x = keras.layers.ReLU(name="r1")(keras.layers.BatchNormalization(name="bn1")(x))
    out = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Conv2D(3, 1, name="c2")(x))
    net = keras.Model(inp, out)
    model = LoadedModel("k3", "", "keras", net, (None, 8, 8, 1), (None, 3), 3)
    x = digits.calibration(16)[..., None]
    result = repair(model, ["cle"], x, recipe="int8")
    assert result.model.keras_major == 2 and type(result.model.keras_model).__module__.startswith("tf_keras")
    assert result.drift is not None and result.drift.max_rel <= FLOAT_RTOL


# ---------------------------------------------------------------- bad input


def test_repair_unknown_method_lists_the_known_ones(demo: LoadedModel, digits: Dataset):
    with pytest.raises(QlabError, match=r"unknown repair method 'equalize'.*fold, cle, absorb, adaround, bias"):
        repair(demo, ["equalize"], digits.calibration(8), recipe="int8")


def test_repair_no_method_refused(demo: LoadedModel, digits: Dataset):
    with pytest.raises(QlabError, match="no repair method given"):
        repair(demo, "", digits.calibration(8), recipe="int8")


@pytest.mark.parametrize("recipe", ["float16", "float32", "dynamic"])
def test_repair_recipe_without_int8_grid_refused(demo: LoadedModel, digits: Dataset, recipe: str):
    with pytest.raises(QlabError, match=rf"recipe {recipe}: .*recipes they can target: .*int8-per-tensor"):
        repair(demo, ["cle"], digits.calibration(8), recipe=recipe)


def test_repair_unknown_recipe_refused(demo: LoadedModel, digits: Dataset):
    with pytest.raises(QlabError, match="unknown recipe 'int7'"):
        repair(demo, ["cle"], digits.calibration(8), recipe="int7")


@pytest.mark.parametrize("calibration", [None, np.zeros((0, 8, 8), np.float32)])
def test_repair_adaround_without_calibration_samples_refused(demo: LoadedModel, calibration: np.ndarray | None):
    with pytest.raises(QlabError, match="adaround needs calibration samples"):
        repair(demo, ["adaround"], calibration, recipe="int8")


def test_repair_empirical_bias_without_samples_refused(demo: LoadedModel):
    with pytest.raises(QlabError, match="empirical bias correction needs calibration samples"):
        repair(demo, ["bias"], None, recipe="int8", settings=RepairSettings(bias_mode="empirical"))


def test_repair_calibration_of_wrong_shape_refused(demo: LoadedModel, digits: Dataset):
    with pytest.raises(QlabError, match=r"calibration samples have shape \(8, 8, 1\).*expects \(8, 8\)"):
        repair(demo, ["cle"], digits.calibration(4)[..., None], recipe="int8")


def test_repair_calibration_with_nan_refused(demo: LoadedModel, digits: Dataset):
    x = digits.calibration(4)
    x[0, 0, 0] = np.nan
    with pytest.raises(QlabError, match="NaN"):
        repair(demo, ["cle"], x, recipe="int8")


def test_repair_subclassed_model_refused(digits: Dataset):
    import tf_keras as keras

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.fc = keras.layers.Dense(10)

        def call(self, x: object) -> object:
            return self.fc(keras.layers.Flatten()(x))

    net = Net()
    net(digits.calibration(1))
    with pytest.raises(QlabError, match="subclassed"):
        repair(_loaded(net, "sub", (None, 8, 8)), ["cle"], digits.calibration(4), recipe="int8")

"""Evaluation of a .tflite against labels and the float reference."""

import numpy as np

from qcore.convert import keras_predict
from qcore.evaluate import evaluate_outputs, evaluate_tflite


def test_evaluate_tflite_float32_agrees_with_keras(tiny_tflite, demo, digits):
    ref = keras_predict(demo, digits.test_inputs())
    ev = evaluate_tflite(tiny_tflite["float32"], digits, ref)
    assert ev.agreement == 1.0 and ev.batched
    assert ev.accuracy == np.mean(np.argmax(ref, 1) == digits.y_test)
    assert ev.size_bytes == len(tiny_tflite["float32"])
    assert sum(map(sum, ev.confusion)) == len(digits.y_test)


def test_evaluate_tflite_int8_reports_dtypes(tiny_tflite, digits):
    ev = evaluate_tflite(tiny_tflite["int8"], digits)
    assert (ev.input_dtype, ev.output_dtype) == ("int8", "int8")
    assert ev.agreement is None and ev.top5 >= ev.accuracy


def test_evaluate_outputs_confusion_grows_to_output_width():
    ev = evaluate_outputs(np.eye(4), np.array([0, 1, 2, 3]), num_classes=2)
    assert len(ev.confusion) == 4 and ev.accuracy == 1.0

"""Evaluation of a .tflite against labels and the float reference."""

import numpy as np

from qcore.inputs.models import predict as keras_predict
from qcore.tflite.evaluate import evaluate_outputs, evaluate_tflite


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


def test_scoring_for_class_scores_and_everything_else():
    from qcore.qtyping import Scoring
    from qcore.tflite.evaluate import scoring_for

    assert scoring_for([(None, 10)]) == Scoring.CLASSES
    assert scoring_for([(None, 10)], num_classes=10) == Scoring.CLASSES
    assert scoring_for([(None, 10)], num_classes=12) == Scoring.OUTPUTS  # labels beyond the output
    assert scoring_for([(None, 1)]) == Scoring.OUTPUTS  # one regression value
    assert scoring_for([(None, 4), (None, 2, 2)]) == Scoring.OUTPUTS  # boxes and a heatmap
    assert scoring_for([(None, 8, 8, 17)]) == Scoring.OUTPUTS  # landmark heatmaps
    assert scoring_for([]) == Scoring.OUTPUTS


def test_evaluate_against_reference_mismatched_outputs():
    import pytest

    from qcore.qtyping import QlabError
    from qcore.tflite.evaluate import evaluate_against_reference

    x = np.zeros((3, 4), np.float32)
    with pytest.raises(QlabError, match="2 outputs but the reference has 1"):
        evaluate_against_reference([x, x], [x])
    with pytest.raises(QlabError, match="output 0 has shape"):
        evaluate_against_reference([x], [np.zeros((3, 5), np.float32)])
    ev = evaluate_against_reference([x + 1], [x])
    assert ev.output_metrics["output_mse"] == 1.0 and ev.n_samples == 3 and ev.scoring == "outputs"

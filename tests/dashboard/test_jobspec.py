"""The API's job boundary: JSON becomes the kind's params dataclass (what the runner takes), or a 422 naming the field."""

from __future__ import annotations

import pytest

from dashboard.api import jobspec
from qcore.jobs.contract import ConvertParams, DebugParams, RepairParams, TuneParams, check_params
from qcore.qtyping import QlabError


def test_parse_gives_the_dataclass_with_every_option_kept() -> None:
    parsed = jobspec.parse("convert", {"model_id": 1, "dataset_id": 2, "recipes": ["int8", "uint8"],
                                       "engine": "aeq", "bench": False})
    assert parsed == ConvertParams(model_id=1, dataset_id=2, recipes=("int8", "uint8"), engine="aeq", bench=False)
    assert check_params(parsed) == "convert"  # what JobRunner.submit accepts as it is
    tune = jobspec.parse("tune", {"model_id": 1, "dataset_id": 2, "engine": "aeq", "deploy_engine": "tf"})
    assert isinstance(tune, TuneParams) and (tune.engine, tune.deploy_engine) == ("aeq", "tf")
    assert jobspec.parse("debug", {"model_id": 1, "dataset_id": 2}) == DebugParams(model_id=1, dataset_id=2)


def test_parse_keeps_all_for_the_engine_to_expand() -> None:
    """`all` is every recipe the chosen engine can express: the worker expands it, not the API with TF's list."""
    parsed = jobspec.parse("convert", {"model_id": 1, "dataset_id": 2, "recipes": "all", "engine": "aeq"})
    assert isinstance(parsed, ConvertParams) and parsed.recipes == ("all",)


@pytest.mark.parametrize(("params", "named"), [
    ({"engine": "onnx"}, "params.engine: unknown engine 'onnx'; known: tf, aeq"),
    ({"recipes": ["int9"]}, "params.recipes"),
    ({"recipez": ["int8"]}, "recipez"),
    ({"calibration_samples": 0}, "params.calibration_samples"),
    ({"bench": "yes"}, "'bench'"),
])
def test_parse_refuses_a_bad_convert_field_by_name(params: dict[str, object], named: str) -> None:
    with pytest.raises(QlabError, match=named.replace(".", r"\.").replace("(", r"\(")):
        jobspec.parse("convert", {"model_id": 1, "dataset_id": 2, **params})


def test_parse_refuses_a_bad_deploy_engine_and_server_kinds() -> None:
    with pytest.raises(QlabError, match="params.deploy_engine: unknown engine 'trt'"):
        jobspec.parse("tune", {"model_id": 1, "dataset_id": 2, "deploy_engine": "trt"})
    with pytest.raises(QlabError, match="server's own job"):
        jobspec.parse("demo", {})
    with pytest.raises(QlabError, match="params: expected an object"):
        jobspec.parse("convert", [1, 2])


def test_parse_takes_a_repair_job_and_refuses_a_bad_method_or_recipe_by_name() -> None:
    parsed = jobspec.parse("repair", {"model_id": 1, "dataset_id": 2, "methods": "cle,adaround",
                                      "recipe": "int8", "engine": "aeq", "adaround_iterations": 200})
    assert parsed == RepairParams(model_id=1, dataset_id=2, methods=("cle", "adaround"), recipe="int8", engine="aeq",
                                  adaround_iterations=200)
    with pytest.raises(QlabError, match="unknown repair method 'smooth'"):
        jobspec.parse("repair", {"model_id": 1, "dataset_id": 2, "methods": ["smooth"]})
    with pytest.raises(QlabError, match="recipe float16: the repairs target the int8 weight grid"):
        jobspec.parse("repair", {"model_id": 1, "dataset_id": 2, "recipe": "float16"})
    with pytest.raises(QlabError, match=r"params\.adaround_iterations"):
        jobspec.parse("repair", {"model_id": 1, "dataset_id": 2, "adaround_iterations": 0})

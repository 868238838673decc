"""The job contract: one params dataclass per kind, the kind read back from the type, and JSON parsed at the boundary."""

from __future__ import annotations

import dataclasses

import pytest

from qcore.jobs.contract import (
    KIND_OF,
    PARAMS,
    BoardBenchParams,
    ConvertParams,
    DebugParams,
    HostBenchParams,
    JobKind,
    QatParams,
    TuneParams,
    check_params,
    kind_of,
    parse_params,
)
from qcore.qtyping import QlabError


def _example(cls: type) -> object:
    """The smallest valid object of a params dataclass: its required fields filled, defaults for the rest."""
    values = {"int": 1, "str": "x", "tuple[int, ...]": (1,)}
    required = {f.name: values[str(f.type)] for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return cls(**required)


def test_kind_of_every_params_dataclass_names_its_kind() -> None:
    assert set(KIND_OF.values()) == set(JobKind)
    for kind, cls in PARAMS.items():
        example = _example(cls)
        assert kind_of(example) is kind
        assert check_params(example) is kind


@pytest.mark.parametrize("bad", [{"model_id": 1, "dataset_id": 1}, ConvertParams, None, (1, 2)])
def test_kind_of_refuses_anything_but_a_params_dataclass(bad: object) -> None:
    with pytest.raises(QlabError, match="params dataclasses of qcore.jobs.contract"):
        kind_of(bad)


def test_check_params_names_the_field_of_the_wrong_type() -> None:
    with pytest.raises(QlabError, match=r"field 'recipes' is declared tuple\[str, \.\.\.\], got \['int8'\]"):
        check_params(ConvertParams(model_id=1, dataset_id=1, recipes=["int8"]))  # type: ignore[arg-type]
    with pytest.raises(QlabError, match="field 'layers'"):
        check_params(QatParams(model_id=1, dataset_id=1, layers="all"))  # type: ignore[arg-type]
    with pytest.raises(QlabError, match="field 'model_id' must be an integer"):
        check_params(DebugParams(model_id=True, dataset_id=1))
    with pytest.raises(QlabError, match="field 'variant_ids'"):
        check_params(HostBenchParams(variant_ids=(1.5,)))  # type: ignore[arg-type]
    with pytest.raises(QlabError, match="field 'max_drop'"):
        check_params(TuneParams(model_id=1, dataset_id=1, max_drop=float("nan")))


def test_parse_params_reads_json_values_only() -> None:
    parsed = parse_params("board_bench", {"board": "b", "variant_ids": [3, 4], "targets": "cpu,npu"})
    assert parsed == BoardBenchParams(board="b", variant_ids=(3, 4), targets=("cpu", "npu"))
    assert parse_params(JobKind.CONVERT, {"model_id": 1, "dataset_id": 2, "engine": "aeq"}).engine == "aeq"
    # a dataclass is already typed: it goes to the runner as it is, never through a dict
    with pytest.raises(QlabError, match="params must be an object of fields, got ConvertParams"):
        parse_params("convert", ConvertParams(model_id=1, dataset_id=1))  # type: ignore[arg-type]

"""The recipe registry."""

import pytest

from qcore.recipes import RECIPES, get_recipe, resolve_recipes

EXPECTED = ["float32", "float16", "dynamic", "int8-fallback", "int8", "uint8", "int16x8", "weight-only",
            "int8-per-tensor", "uint8-per-tensor"]


def test_registry_lists_every_recipe_of_the_issue():
    assert list(RECIPES) == EXPECTED
    assert all(r.summary and r.summary.endswith(".") for r in RECIPES.values())


def test_resolve_recipes_all_selects_every_recipe_the_engine_expresses():
    from qcore import engines

    assert [r.name for r in engines.resolve_recipes("all", "tf")] == [n for n in EXPECTED if n != "weight-only"]
    assert [r.name for r in engines.resolve_recipes("all", "aeq")] == EXPECTED
    assert not engines.supports("tf", get_recipe("weight-only"))
    assert [r.name for r in resolve_recipes("all")] == EXPECTED  # without an engine: the whole registry


def test_every_recipe_has_an_engine_that_makes_it():
    from qcore.engines import ENGINES

    for recipe in RECIPES.values():
        assert any(not e.refusal(recipe) for e in ENGINES.values()), recipe.name


def test_unknown_engine_lists_the_known_ones():
    from qcore import engines
    from qcore.qtyping import QlabError

    with pytest.raises(QlabError, match="unknown engine 'tpu'; known engines: tf, aeq"):
        engines.resolve_recipes("all", "tpu")


def test_resolve_recipes_keeps_order_and_drops_repeats():
    assert [r.name for r in resolve_recipes("uint8, int8,uint8")] == ["uint8", "int8"]


def test_get_recipe_unknown_lists_known_names():
    with pytest.raises(ValueError, match="unknown recipe 'int4'.*float32.*weight-only"):
        get_recipe("int4")


def test_resolve_recipes_empty_is_an_error():
    with pytest.raises(ValueError, match="no recipe given"):
        resolve_recipes(" , ")


def test_per_tensor_recipes_disable_per_channel_and_stay_integer_only():
    for name in ("int8-per-tensor", "uint8-per-tensor"):
        r = get_recipe(name)
        assert not r.per_channel and r.integer_only and r.supported_ops == ("TFLITE_BUILTINS_INT8",)
    assert get_recipe("int8").per_channel

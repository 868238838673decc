"""Quantization engines behind one interface (`qcore.engines.base`): the TF converter and AI Edge Quantizer.

Adding an engine is one module with an `ENGINE` and one line in `ENGINES`.
"""

from __future__ import annotations

from qcore import recipes
from qcore.engines import aeq, tf
from qcore.engines.base import Engine
from qcore.qtyping import QlabError, Recipe

ENGINES: dict[str, Engine] = {e.name: e for e in (tf.ENGINE, aeq.ENGINE)}


def get_engine(name: str) -> Engine:
    """The engine of this name.

    Raises:
        QlabError: listing the known engines.
    """
    try:
        return ENGINES[str(name)]
    except KeyError:
        raise QlabError(f"unknown engine {name!r}; known engines: {', '.join(ENGINES)}") from None


def supports(engine: str, recipe: Recipe) -> bool:
    """Whether `engine` can express `recipe`."""
    return not get_engine(engine).refusal(recipe)


def variant_name(base: str, engine: str) -> str:
    """A variant's name: what it is (a recipe, a keep-float build) with the engine's mark, e.g. "int8@aeq"."""
    return base + get_engine(engine).suffix


def resolve_recipes(spec: str, engine: str) -> list[Recipe]:
    """`all` (every recipe the engine can express) or a comma-separated list, as recipes.

    Raises:
        QlabError: for an unknown engine, an empty spec or an unknown recipe name.
    """
    eng = get_engine(engine)
    try:
        return recipes.resolve_recipes(spec, lambda r: not eng.refusal(r))
    except ValueError as exc:
        raise QlabError(str(exc)) from None

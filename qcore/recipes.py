"""The registry of post-training recipes: name → one line for users → converter settings."""

from __future__ import annotations

from collections.abc import Callable

from qcore.qtyping import Recipe

_INT8_ONLY = ("TFLITE_BUILTINS_INT8",)
_INT16X8 = ("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("float32", "No quantization: the float baseline as a .tflite."),
        Recipe(
            "float16",
            "Weights stored as float16: half the size, float math; the NPU cannot run it.",
            optimize=True,
            supported_types=("float16",),
        ),
        Recipe(
            "dynamic",
            "Dynamic range: int8 weights, float activations quantized on the fly; no calibration data.",
            optimize=True,
        ),
        Recipe(
            "int8-fallback",
            "Full integer where possible, float kernels where not; float input and output.",
            optimize=True,
            representative=True,
        ),
        Recipe(
            "int8",
            "Integer only with int8 input and output: what the i.MX8M Plus NPU and Edge TPU need.",
            optimize=True,
            representative=True,
            supported_ops=_INT8_ONLY,
            inference_input_type="int8",
            inference_output_type="int8",
            integer_only=True,
        ),
        Recipe(
            "uint8",
            "Integer only with uint8 input and output (camera pixels straight in), int8 inside.",
            optimize=True,
            representative=True,
            supported_ops=_INT8_ONLY,
            inference_input_type="uint8",
            inference_output_type="uint8",
            integer_only=True,
        ),
        Recipe(
            "int16x8",
            "16-bit activations, 8-bit weights: better accuracy than int8, CPU only on most NPUs.",
            optimize=True,
            representative=True,
            supported_ops=_INT16X8,
        ),
        Recipe(
            "weight-only",
            "int8 weights turned back into float before float math: smallest accuracy loss, no speed-up; "
            "AI Edge Quantizer only.",
        ),
        Recipe(
            "int8-per-tensor",
            "Integer only, int8 I/O, one scale per weight tensor: avoids the NPU's slow per-channel path.",
            optimize=True,
            representative=True,
            supported_ops=_INT8_ONLY,
            inference_input_type="int8",
            inference_output_type="int8",
            per_channel=False,
            integer_only=True,
        ),
        Recipe(
            "uint8-per-tensor",
            "Integer only, uint8 I/O, one scale per weight tensor: the classic NPU-friendly layout.",
            optimize=True,
            representative=True,
            supported_ops=_INT8_ONLY,
            inference_input_type="uint8",
            inference_output_type="uint8",
            per_channel=False,
            integer_only=True,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """Looks up a recipe by name.

    Raises:
        ValueError: naming the unknown recipe and listing the known ones.
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)} (or 'all')") from None


def resolve_recipes(spec: str, supported: Callable[[Recipe], bool] = lambda _: True) -> list[Recipe]:
    """Turns `all` or a comma-separated list into recipes, in the order given, without repeats.

    `all` means every recipe `supported` accepts (an engine's, see `qcore.engines.supports`); a name
    given explicitly is kept even if unsupported, and the engine refuses it by name when it converts.

    Raises:
        ValueError: for an empty spec or an unknown name.
    """
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no recipe given; known recipes: {', '.join(RECIPES)} (or 'all')")
    if names == ["all"]:
        return [r for r in RECIPES.values() if supported(r)]
    out: list[Recipe] = []
    for name in names:
        recipe = get_recipe(name)
        if recipe not in out:
            out.append(recipe)
    return out

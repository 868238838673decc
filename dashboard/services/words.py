"""Engine messages in the dashboard's words: a CLI flag becomes the name of the control that sets it."""

from __future__ import annotations

import re

# CLI flag → the control the pages show for it (labels as the pages write them)
CONTROLS: dict[str, str] = {
    "--layers": "the 'layer classes or names' box",
    "--epochs": "'epochs'",
    "--batch-size": "'batch size'",
    "--learning-rate": "'learning rate'",
    "--train-samples": "'training samples'",
    "--max-drop": "'max accuracy drop (points)'",
    "--engine": "the engine choice",
    "--metrics": "'extra layer metrics'",
    "--whole-model": "'whole-model verification'",
    "--reference": "a reference .tflite",
    "--calibration-samples": "'calibration samples'",
    "--debug-samples": "'debug samples'",
    "--denylist-nodes": "'keep these float'",
    "--denylist-ops": "'and every op of these types'",
}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
# "e.g. --layers Dense,Conv2D": an example value, said as what to enter where
_EXAMPLE = re.compile(r"e\.g\. (--[a-z][a-z-]*) (\S+)")


def for_ui(message: str) -> str:
    """The message with every known CLI flag replaced by its control's name (unknown flags stay)."""

    def example(m: re.Match[str]) -> str:
        control = CONTROLS.get(m.group(1))
        return f"e.g. {m.group(2)} in {control}" if control else m.group(0)

    text = _EXAMPLE.sub(example, message)
    return _FLAG.sub(lambda m: CONTROLS.get(m.group(0), m.group(0)), text)

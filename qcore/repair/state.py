"""The working state one repair run hands from step to step: the draft model and what earlier steps learned."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcore.qtyping import Progress, Recipe, RepairSettings, RepairSkip, no_progress
from qcore.repair.graph import Draft
from qcore.repair.layers import Role, role_of, weighted_problem


@dataclass
class BnStats:
    """A folded BatchNormalization's beta and |gamma|: the layer's pre-activation is assumed N(beta, gamma^2).

    Kept in the layer's current output scale: CLE divides both by its scale factors, absorption
    subtracts what it moved out of the bias from beta.
    """

    beta: np.ndarray
    gamma: np.ndarray


@dataclass(frozen=True)
class Pair:
    """Two weighted layers joined by per-channel positively homogeneous layers only (CLE can scale across)."""

    first: str
    second: str
    path: tuple[str, ...]  # the layers in between (activations, pooling, padding)


@dataclass
class StepOutcome:
    """What one repair reports back to the engine."""

    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)


@dataclass
class RepairState:
    """Mutable while `repair` runs; the result it makes is frozen."""

    draft: Draft
    recipe: Recipe
    settings: RepairSettings
    calibration: np.ndarray | None
    progress: Progress = no_progress
    bn_stats: dict[str, BnStats] = field(default_factory=dict)
    relu6_replaced: list[str] = field(default_factory=list)
    skipped: list[RepairSkip] = field(default_factory=list)
    # weighted layers whose kernels AdaRound put on the grid: the converter reproduces them exactly
    snapped: set[str] = field(default_factory=set)
    # their float kernels from before AdaRound: bias correction measures the shift against these
    float_kernels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_data(self) -> bool:
        return self.calibration is not None and len(self.calibration) > 0

    def quantized_layers(self, method: str) -> list[str]:
        """The weighted layers whose kernels the converter puts on the grid as they are, in graph order.

        RepairSkip by name: layers the repairs cannot handle (shared, grouped, channels_first) and
        layers that still feed a BatchNormalization, which the converter folds into them, moving
        their weights off any grid computed here.
        """
        graph = self.draft.graph
        out: list[str] = []
        for info in graph:
            if role_of(info) != Role.WEIGHTED:
                continue
            problem = weighted_problem(info, self.draft.kernel(info.name))
            readers = graph.consumers_of(info.name)
            if not problem and any(r in graph.layers and graph.layers[r].class_name == "BatchNormalization"
                                   for r in readers):
                problem = ("a BatchNormalization reads its output (fold could not take it), which the converter may "
                           "fold into its weights, moving them off any grid computed here")
            if problem:
                self.skip(method, info.name, problem)
            else:
                out.append(info.name)
        return out

    def skip(self, method: str, layer: str, reason: str) -> None:
        """Records a structure a repair left alone (once per method, layer and reason)."""
        item = RepairSkip(method, layer, reason)
        if item not in self.skipped:
            self.skipped.append(item)

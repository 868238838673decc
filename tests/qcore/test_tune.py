"""The float-layer search: the bisection as a pure function, the ranking, and a real search on a fragile model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from qcore.explain.search import bisect_denylist, rank_layers, tune
from qcore.lab.publish import publish
from qcore.qtyping import Dataset, LayerStat, LoadedModel, QlabError, TuneResult
from qcore.store import Store


class Threshold:
    """A model of the search's world: accuracy passes once k reaches `needed`; counts the calls."""

    def __init__(self, needed: int | None, fail_on: tuple[int, ...] = ()) -> None:
        self.needed = needed
        self.fail_on = fail_on
        self.calls: list[int] = []

    def __call__(self, k: int) -> tuple[float, int]:
        self.calls.append(k)
        if k in self.fail_on:
            raise QlabError(f"conversion {k} refused")
        ok = self.needed is not None and k >= self.needed
        return (0.9 if ok else 0.5), 1000 + 100 * k


@pytest.mark.parametrize("n_layers,needed", [(20, 5), (20, 1), (20, 20), (33, 17), (1, 1), (64, 40)])
def test_bisect_denylist_finds_smallest_k(n_layers: int, needed: int) -> None:
    world = Threshold(needed)
    steps, best = bisect_denylist(n_layers, world, target=0.8)
    assert best == needed
    assert [s.k for s in steps] == world.calls
    assert len(set(world.calls)) == len(world.calls)  # no k converted twice
    assert len(steps) <= math.ceil(math.log2(n_layers)) + 2
    assert steps[0].k == 0 and not steps[0].passed
    assert all(s.passed == (s.k >= needed) for s in steps)


def test_bisect_denylist_full_quantization_passes() -> None:
    world = Threshold(0)
    steps, best = bisect_denylist(30, world, target=0.8)
    assert best == 0 and world.calls == [0] and steps[0].passed


def test_bisect_denylist_none_passes() -> None:
    world = Threshold(None)
    steps, best = bisect_denylist(16, world, target=0.8)
    assert best is None
    assert 16 in world.calls  # "none passes" is only said after keeping every layer in float
    assert not any(s.passed for s in steps)
    assert len(steps) <= math.ceil(math.log2(16)) + 2


def test_bisect_denylist_refused_conversion_counts_as_fail() -> None:
    world = Threshold(3, fail_on=(4,))
    steps, best = bisect_denylist(8, world, target=0.8)
    refused = [s for s in steps if s.k == 4]
    assert refused and not refused[0].passed and "refused" in refused[0].error
    assert math.isnan(refused[0].accuracy)
    # k=4 "failed", so the search looks above it: the smallest passing k it can trust is 5
    assert best == 5


def test_bisect_denylist_no_layers() -> None:
    steps, best = bisect_denylist(0, Threshold(5), target=0.8)
    assert best is None and [s.k for s in steps] == [0]


def test_rank_layers_worst_first_nan_last() -> None:
    def stat(name: str, rmse_scale: float) -> LayerStat:
        return LayerStat("OP", 0, name, 1, 0, 0, 0, 0, 1, 0, 255, rmse_scale)

    stats = [stat("a", 0.3), stat("b", float("nan")), stat("c", 2.0), stat("d", 0.9), stat("c", 0.1)]
    assert rank_layers(stats) == ["c", "d", "a", "b"]


# ---------------------------------------------------------------- a real search
def build_fragile(ds: Dataset) -> LoadedModel:
    """An MLP whose hidden activations have one huge outlier unit: same float function, ruined by int8.

    The outlier unit's outputs are scaled by 300 and the next layer's inputs by 1/300 (ReLU is
    positively homogeneous), so the float model is unchanged but int8 activation ranges are not.
    """
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.Sequential(
        [tf_keras.layers.InputLayer(input_shape=(8, 8)), tf_keras.layers.Flatten(name="flat"),
         tf_keras.layers.Dense(32, activation="relu", name="h1"),
         tf_keras.layers.Dense(32, activation="relu", name="h2"), tf_keras.layers.Dense(10, name="out")],
        name="fragile",
    )
    net.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(ds.preprocess(ds.x_train), ds.y_train, epochs=15, batch_size=32, verbose=0)
    h1, h2 = net.get_layer("h1"), net.get_layer("h2")
    act = tf_keras.Model(net.inputs, h1.output).predict(ds.preprocess(ds.x_train), verbose=0)
    j, c = int(np.argmax(act.mean(axis=0))), 300.0
    w1, b1 = h1.get_weights()
    w2, b2 = h2.get_weights()
    w1[:, j] *= c
    b1[j] *= c
    w2[j, :] /= c
    h1.set_weights([w1, b1])
    h2.set_weights([w2, b2])
    return LoadedModel("fragile", "fragile.h5", "h5", net, (None, 8, 8), (None, 10), 2)


@pytest.fixture(scope="module")
def fragile(digits: Dataset, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The fragile MLP, saved as .h5 so it can be registered in a store."""
    model = build_fragile(digits)
    path = tmp_path_factory.mktemp("fragile") / "fragile.h5"
    model.keras_model.save(path)
    return LoadedModel(model.name, str(path), "h5", model.keras_model, model.input_shape, model.output_shape, 2)


@pytest.fixture(scope="module")
def fragile_search(fragile: LoadedModel, digits: Dataset,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[TuneResult, Store, Path]:
    """One published float-layer search (no repairs) on the fragile model with a one-point budget."""
    root = tmp_path_factory.mktemp("tune")
    store = Store(root / "qlab.duckdb")
    result = tune(fragile, digits, max_drop=1.0, calibration_samples=50, debug_samples=50, repairs=())
    yield publish(store, result, made_from=(fragile, digits)), store, root
    store.close()


@pytest.mark.slow
def test_tune_fragile_model_finds_passing_denylist(fragile_search: tuple[TuneResult, Store, Path]) -> None:
    r, _, out = fragile_search
    assert r.target_accuracy == pytest.approx(r.float_accuracy - 0.01)
    assert r.tried[0].denylist == () and not r.tried[0].passed  # full int8 loses far more than a point
    assert r.chosen is not None and r.chosen.passed
    assert r.chosen.accuracy >= r.target_accuracy
    assert 0 < len(r.chosen.denylist) <= len(r.ranking)
    assert r.chosen.denylist == r.ranking[: len(r.chosen.denylist)]
    assert len(r.tried) <= math.ceil(math.log2(len(r.ranking))) + 2
    # every trial with fewer float layers than the chosen one failed
    assert all(not t.passed for t in r.tried if len(t.denylist) < len(r.chosen.denylist))
    variant = r.chosen_variant
    assert variant is not None and Path(variant.path).read_bytes() == variant.tflite
    assert variant.size_bytes == r.chosen.size_bytes and variant.engine == r.deploy_engine == "tf"
    assert r.remedy == "float layers" and r.repairs == () and r.repaired_variant is None


@pytest.mark.slow
def test_tune_tries_repairs_first_and_says_they_met_the_target(fragile: LoadedModel, digits: Dataset,
                                                                tmp_path: Path) -> None:
    """The fragile MLP's outlier unit is what CLE undoes: the repaired model meets the target with every layer
    quantized, so no layer is kept float, and the stored variant is the repaired one, named for its repairs."""
    r = tune(fragile, digits, max_drop=1.0, calibration_samples=50, debug_samples=50, recipe="int8-per-tensor")
    assert r.remedy == "repair" and r.repairs == ("cle", "bias")
    assert r.tried[0].denylist == () and r.tried[0].repairs == () and not r.tried[0].passed  # plain misses
    assert r.chosen is not None and r.chosen.denylist == () and r.chosen.passed and r.chosen.repairs == ("cle", "bias")
    assert r.chosen.accuracy >= r.target_accuracy
    variant = r.chosen_variant
    assert variant is not None and variant.kind == "repair" and variant.name == "int8-per-tensor + CLE + bias"
    assert variant.npu is not None and variant.npu.ready  # every op integer: it stays on the NPU
    assert r.repair_record["methods"] == ["cle", "bias"]
    with Store(tmp_path / "qlab.duckdb") as store:
        published = publish(store, r, made_from=(fragile, digits))
        assert published.chosen_variant_id == published.repaired_variant.variant_id  # type: ignore[union-attr]
        row = store.variant(published.chosen_variant_id)
        assert row["kind"] == "repair" and json.loads(row["settings"])["methods"] == ["cle", "bias"]


@pytest.mark.slow
def test_tune_stores_run_trials_and_variant(fragile_search: tuple[TuneResult, Store, Path]) -> None:
    r, store, _ = fragile_search
    assert r.tune_run_id is not None and r.debug.debug_run_id is not None
    trials = store.tune_trials(r.tune_run_id)
    assert len(trials) == len(r.tried)
    assert [json.loads(d) if isinstance(d, str) else list(d) for d in trials["denylist"]] == \
        [list(t.denylist) for t in r.tried]
    assert list(trials["passed"]) == [t.passed for t in r.tried]
    row = store.variant(r.chosen_variant_id)
    assert row["kind"] == "tune"
    assert json.loads(row["settings"])["denylisted_nodes"] == list(r.chosen.denylist)
    assert row["accuracy"] == pytest.approx(r.chosen.accuracy)


@pytest.mark.slow
def test_tune_no_budget_needed_on_demo(demo: LoadedModel, digits: Dataset) -> None:
    r = tune(demo, digits, max_drop=5.0, calibration_samples=50, debug_samples=30)
    assert r.chosen is not None and r.chosen.denylist == () and len(r.tried) == 1
    assert r.tune_run_id is None and r.chosen_variant is not None and r.chosen_variant.path == ""


def test_tune_negative_budget(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="max-drop.*-0.5"):
        tune(demo, digits, max_drop=-0.5)


def test_tune_nan_budget(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="max-drop.*nan"):
        tune(demo, digits, max_drop=float("nan"))


def test_tune_refuses_16x8(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="int16x8"):
        tune(demo, digits, max_drop=1.0, recipe="int16x8")

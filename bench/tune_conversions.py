"""Conversions the float-layer search uses against the number of layers, on a model with >= 20 quantized layers.

The model is a deep MLP (22 Dense layers) trained briefly on digits. In a few layers one huge weight
is planted on an input that is always zero (a blank corner pixel, or a hidden unit switched off), so
the float model is unchanged but int8 per-channel weight scales become so coarse that those layers'
other weights round to zero: full int8 misses the target and the search has real work. A linear
search would need up to L conversions; bisection about log2(L).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qcore  # noqa: E402,F401
from qcore.explain.search import tune  # noqa: E402
from qcore.inputs.data import digits_dataset  # noqa: E402
from qcore.qtyping import Dataset, LoadedModel  # noqa: E402

DEPTH = 22
WIDTH = 32
EPOCHS = 12
# layers that get a planted weight outlier (d00 reads the always-blank pixel 0 of the 8x8 digits)
OUTLIER_LAYERS = (0, 7, 14)
# 1000 / 127 per int8 step: every ordinary weight (|w| ~ 0.1-0.5) of the layer rounds to zero
OUTLIER = 1000.0
MAX_DROP = 1.0


def build_deep_mlp(ds: Dataset, path: Path) -> LoadedModel:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    layers = [tf_keras.layers.InputLayer(input_shape=(8, 8)), tf_keras.layers.Flatten(name="flat")]
    layers += [tf_keras.layers.Dense(WIDTH, activation="relu", kernel_initializer="he_normal", name=f"d{i:02d}")
               for i in range(DEPTH - 1)]
    layers.append(tf_keras.layers.Dense(10, name="logits"))
    net = tf_keras.Sequential(layers, name="deep_mlp")
    net.compile(tf_keras.optimizers.Adam(1e-3), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    x = ds.preprocess(ds.x_train)
    net.fit(x, ds.y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    assert not np.any(x.reshape(len(x), -1)[:, 0]), "pixel 0 of the digits is expected to be blank"
    for i in OUTLIER_LAYERS:
        layer = net.get_layer(f"d{i:02d}")
        w, b = layer.get_weights()
        if i > 0:  # switch hidden unit 0 of the previous layer off, so it is an always-zero input here
            prev = net.get_layer(f"d{i - 1:02d}")
            pw, pb = prev.get_weights()
            pw[:, 0], pb[0] = 0.0, -1.0
            prev.set_weights([pw, pb])
        w[0, :] = OUTLIER  # multiplies an input that is always zero: no effect in float
        layer.set_weights([w, b])
    net.save(path)
    return LoadedModel("deep_mlp", str(path), "h5", net, (None, 8, 8), (None, 10), 2)


def main() -> None:
    ds = digits_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_deep_mlp(ds, Path(tmp) / "deep_mlp.h5")
        t = time.perf_counter()
        r = tune(model, ds, max_drop=MAX_DROP)
        elapsed = time.perf_counter() - t
    n_layers = len(r.ranking)
    quantized = DEPTH  # every Dense layer is a quantized FULLY_CONNECTED in the int8 model
    bound = math.ceil(math.log2(n_layers)) + 1
    print(f"deep MLP: {quantized} quantized Dense layers, {n_layers} ranked tensors; float accuracy "
          f"{r.float_accuracy:.4f}, target {r.target_accuracy:.4f} (max drop {MAX_DROP:g} point)")
    for trial in r.tried:
        print(f"  {len(trial.denylist):>3} layers in float: accuracy {trial.accuracy:.4f}  {trial.size_bytes:>7} B  "
              f"{'pass' if trial.passed else 'fail'}")
    chosen = f"{len(r.chosen.denylist)} layers in float" if r.chosen else "none passes"
    print(f"chosen: {chosen}; search took {elapsed:.1f} s")
    for name in r.chosen.denylist if r.chosen else ():
        print(f"    {name}")
    print(f"planted outliers in: {', '.join(f'd{i:02d}' for i in OUTLIER_LAYERS)}")
    print(f"conversions used: {len(r.tried)} for L = {n_layers} layers (linear search: up to {n_layers + 1}; "
          f"ceil(log2 L) + 1 = {bound})")
    print(f"ratio conversions / L: {len(r.tried) / n_layers:.3f}; conversions / (log2 L + 1): "
          f"{len(r.tried) / (math.log2(n_layers) + 1):.2f}")
    ok = quantized >= 20 and len(r.tried) <= bound + 1 and not r.tried[0].passed
    print(f"-> {'PASS' if ok else 'MISS'} (>= 20 quantized layers, full int8 misses the target, "
          f"<= ceil(log2 L) + 2 conversions)")


if __name__ == "__main__":
    main()

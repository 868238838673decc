"""Defaults written once: the engine, the job contract, the pages and the CLI all read them from here."""

from __future__ import annotations

import os
from pathlib import Path

# the lab's files live here unless QLAB_DATA_DIR / QLAB_DB say otherwise
REPO_ROOT = Path(__file__).resolve().parents[1]

# calibration: the first N training samples, batch 1 (the converter's representative dataset)
CALIBRATION_SAMPLES = 100
# the debugger's per-layer statistics run on the first M test samples
DEBUG_SAMPLES = 100
# the debugger needs float fallback to explain a model with ops that have no int8 kernel
DEBUG_RECIPE = "int8-fallback"
# one engine for convert and the explain loop alike: explaining a model made by another engine gives
# suspects for a model nobody ships (AEQ's int8 of MobileNetV2 needed 40 float layers where TF's needed
# none). The explain loop uses the engine of the variant it explains; this is the default when none is named.
ENGINE = "tf"
# the debugger's suspects: rmse/scale of a well-quantized tensor is 1/sqrt(12) ≈ 0.289; well above it is suspect
SUSPECT_THRESHOLD = 0.7
# the float-layer search's default accuracy budget, in points
TUNE_MAX_DROP = 0.5
# repairs target the NPU's fast path (integer only, one scale per weight tensor); CLE + bias correction
# cost under one conversion, AdaRound about two (bench/repair.py), so the cheap pair is the default
REPAIR_RECIPE = "int8-per-tensor"
REPAIR_METHODS = ("cle", "bias")
# the float-layer search tries these repairs before it keeps any layer float ("none" in the CLI: skip them)
TUNE_REPAIRS = ("cle", "bias")
# tensor comparison: a few test samples are enough to rank tensors
COMPARE_SAMPLES = 20
# host and board timing: enough runs for a stable p50 of a small model
BENCH_RUNS = 50
BENCH_WARMUP = 5
# QAT fine-tuning
QAT_EPOCHS = 3
QAT_BATCH = 32
# fine-tuning a trained model: a tenth of Adam's usual 1e-3 keeps it from forgetting
QAT_LEARNING_RATE = 1e-4
# host timing right after a conversion: enough runs for a stable p50 of a small model
HOST_BENCH_RUNS = 30
HOST_BENCH_WARMUP = 3


def data_dir() -> Path:
    """`QLAB_DATA_DIR`, else `data/` in the repository: the database, blobs, uploads, tokens, logs."""
    env = os.environ.get("QLAB_DATA_DIR")
    return Path(env) if env else REPO_ROOT / "data"


def db_path() -> Path:
    """`QLAB_DB`, else `qlab.duckdb` in the data directory."""
    env = os.environ.get("QLAB_DB")
    return Path(env) if env else data_dir() / "qlab.duckdb"

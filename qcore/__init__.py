"""qlab's engine: convert, measure, explain and store TFLite quantization results (no Streamlit)."""

import os

# tfmot needs Keras 2: this must be set before anything imports TensorFlow
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO/WARNING lines are noise for users of a CLI
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

"""qlab's board agent: times and runs .tflite models on an i.MX8M Plus (or any Linux host) over HTTP."""

__version__ = "0.1.0"

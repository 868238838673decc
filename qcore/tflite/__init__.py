"""TFLite files: the LiteRT runtime, inspection and the NPU lint, evaluation, latency, tensor comparison."""

"""Inputs: loading Keras models and data, unpacking archives, and the safety policy for uploads."""

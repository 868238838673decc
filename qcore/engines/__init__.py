"""Quantization engines: the TF converter and AI Edge Quantizer behind one interface."""

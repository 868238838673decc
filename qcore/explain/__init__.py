"""Explaining accuracy loss: per-layer error, suspects, keep-float builds and the float-layer search."""

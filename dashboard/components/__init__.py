"""Plotly figure builders: pure functions, DataFrame in, `go.Figure` out (tested without a browser)."""

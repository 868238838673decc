"""/math: the quantization calculator of seeds 000 and 001 (scale, zero point, mean/std_dev, the mapping)."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.components.qmath import mapping_plot
from qcore.tflite import qmath

# enough points that every integer step of an 8-bit range shows in the staircase and its error
MAPPING_POINTS = 4001

st.title("Quantization math")
st.caption("real = scale · (q − zero_point). TFLite widens the range to include 0 and rounds the zero "
           "point so that 0.0 is exact.")

c1, c2, c3 = st.columns(3)
lo = c1.number_input("min", value=-2.0, format="%.6g", key="math_min")
hi = c2.number_input("max", value=6.0, format="%.6g", key="math_max")
dtype = c3.selectbox("integer type", ["int8", "uint8", "int16"], key="math_dtype")

with ui.guard("cannot compute"):
    qmin, qmax = qmath.int_range(dtype)
    scale, zero_point = qmath.scale_zero_point(lo, hi, qmin, qmax)
    rep_lo, rep_hi = qmath.representable_range(scale, zero_point, qmin, qmax)
    m1, m2, m3 = st.columns(3)
    m1.metric("scale", f"{scale:.8g}")
    m2.metric("zero point", zero_point)
    m3.metric("representable range", f"[{rep_lo:.4g}, {rep_hi:.4g}]")

    st.subheader("Quantize and dequantize a value")
    value = st.number_input("float value", value=3.0, format="%.6g", key="math_value")
    q = int(qmath.quantize(value, scale, zero_point, qmin, qmax))
    back = float(qmath.dequantize(q, scale, zero_point))
    v1, v2, v3 = st.columns(3)
    v1.metric("quantized", q)
    v2.metric("dequantized", f"{back:.8g}")
    v3.metric("error", f"{back - value:.3g}")

    st.plotly_chart(mapping_plot(qmath.mapping_table(lo, hi, qmin, qmax, n=MAPPING_POINTS), marked=(value, q, back)),
                    key="math_mapping")

st.subheader("tflite_convert's mean / std_dev")
st.caption("For integer inputs the converter reads real = (q − mean) / std_dev on [0, 255]: "
           "std_dev = 1 / scale, mean = zero point.")
left, right = st.columns(2)
with left, ui.guard("cannot compute"):
    st.markdown("**from min / max**")
    a, b = st.columns(2)
    rmin = a.number_input("input min", value=0.0, format="%.6g", key="math_rmin")
    rmax = b.number_input("input max", value=1.0, format="%.6g", key="math_rmax")
    mean, std = qmath.mean_std_from_range(rmin, rmax)
    st.metric("mean, std_dev", f"{mean:.6g}, {std:.6g}")
with right, ui.guard("cannot compute"):
    st.markdown("**to min / max**")
    a, b = st.columns(2)
    mean_in = a.number_input("mean", value=127.5, format="%.6g", key="math_mean")
    std_in = b.number_input("std_dev", value=127.5, format="%.6g", key="math_std")
    out_lo, out_hi = qmath.range_from_mean_std(mean_in, std_in)
    s2, z2 = qmath.scale_zero_point_from_mean_std(mean_in, std_in)
    st.metric("min, max", f"{out_lo:.6g}, {out_hi:.6g}")
    st.caption(f"scale {s2:.6g}, zero point {z2}")

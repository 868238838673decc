"""/qat: quantization-aware training of the whole model or chosen layers, with live curves and the pitfall checks."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import ui
from dashboard.components.training import qat_curves
from dashboard.services import reads
from qcore.jobs.contract import QatParams
from qcore.qtyping import Job, JobStatus

st.title("Quantization-aware training")
st.caption("Fine-tunes the model with fake quantization (tfmot), converts it, and checks the known pitfall: "
           "the quantizers' ranges converge slowly, so a short run can look fine in Keras and lose accuracy "
           "as a .tflite.")
lab = ui.current()

c1, c2 = st.columns(2)
with c1:
    model_id = ui.pick_model(lab, key="qat_model", follow=("qat",))
with c2:
    dataset_id = ui.pick_dataset(lab, key="qat_dataset", for_model=model_id, follow=("qat",))
if model_id is None or dataset_id is None:
    st.stop()

with st.form("qat_form"):
    whole = st.radio("quantize", ["the whole model", "chosen layers"], horizontal=True, key="qat_scope")
    layer_choices: list[str] = []
    with ui.guard("cannot read the model's layers"):
        layers = reads.model_layers(lab.db_key, int(model_id))
        layer_choices = sorted({cls for _, cls in layers}) + [name for name, _ in layers]
    chosen = st.multiselect("layer classes or names (for chosen layers)", layer_choices, key="qat_layers",
                            help="e.g. only Dense: quantize the dense layers and leave the rest float")
    a, b, c, d = st.columns(4)
    epochs = a.number_input("epochs", 1, 500, 3, key="qat_epochs")
    batch = b.number_input("batch size", 1, 4096, 32, key="qat_batch")
    lr = c.number_input("learning rate", 1e-7, 1.0, 1e-4, format="%.1e", key="qat_lr")
    samples = d.number_input("training samples (0 = all)", 0, 10_000_000, 0, key="qat_samples")
    int_io = st.checkbox("integer-only with int8 input and output (for the NPU)", key="qat_int_io")
    gpu = st.checkbox("run on a GPU worker", key="qat_gpu",
                      help="sends the job to a Dask worker started with --resources GPU=1; it waits until one "
                           "is connected")
    if st.form_submit_button("Train", type="primary"):
        with ui.guard("could not start"):
            if whole == "chosen layers" and not chosen:
                raise ValueError("choose at least one layer class or name, or quantize the whole model")
            ui.submit(lab, QatParams(
                model_id=int(model_id), dataset_id=int(dataset_id),
                layers=("all",) if whole == "the whole model" else tuple(chosen), epochs=int(epochs),
                batch_size=int(batch), learning_rate=float(lr), train_samples=int(samples),
                int_io=bool(int_io), gpu=bool(gpu),
            ))
            st.rerun()


def live_curves(job: Job) -> None:
    history = pd.DataFrame((job.live or {}).get("history", []))
    st.plotly_chart(qat_curves(history), key="qat_live_curves")


def show_result(job: Job) -> None:
    r = job.result or {}
    a, b, c, d = st.columns(4)
    a.metric("float model", ui.pct(r.get("float_accuracy")))
    b.metric("QAT Keras", ui.pct(r.get("keras_accuracy")))
    c.metric("QAT TFLite", ui.pct(r.get("tflite_accuracy")),
             delta=f"{100 * (r['tflite_accuracy'] - r['keras_accuracy']):+.2f} points vs Keras"
             if r.get("tflite_accuracy") is not None and r.get("keras_accuracy") is not None else None)
    d.metric("range drift, last epoch", ui.pct(r.get("range_drift")))
    found = reads.variants(lab.db_key, variant_ids=(int(r["variant_id"]),)) if r.get("variant_id") else None
    if found is not None and not found.empty:
        ui.npu_verdict(found.iloc[0], f"QAT variant {found.iloc[0]['variant']}")
        ui.use_variant_button(int(r["variant_id"]), int(found.iloc[0]["model_id"]), key="qat_use_variant")
    for warning in r.get("warnings", []):
        st.warning(warning, icon=":material/warning:")
    if not r.get("warnings"):
        st.success("Keras and TFLite agree within a point and the ranges have settled.",
                   icon=":material/check_circle:")
    st.plotly_chart(qat_curves(pd.DataFrame(r.get("history", []))), key="qat_result_curves")


st.subheader("Latest training")
job = ui.latest_job(lab, ("qat",))
if job is None:
    st.caption("No QAT has run yet.")
ui.job_panel(job, key="qat_job", on_done=show_result, live=live_curves)

variants = reads.variants(lab.db_key, model_ids=(int(model_id),))
qat_variants = variants[variants["kind"] == "qat"] if not variants.empty else variants
if not qat_variants.empty:
    st.subheader("QAT variants of this model")
    options = ui.variant_options(qat_variants)
    vid = st.selectbox("variant", list(options), format_func=options.__getitem__, key="qat_variant")
    if job is not None and (job.result or {}).get("variant_id") == vid and job.status is JobStatus.DONE:
        st.caption("Its curves are the latest training's, above.")  # not the same chart twice
    else:
        st.plotly_chart(qat_curves(reads.training_history(lab.db_key, int(vid))), key="qat_history_curves")

"""/models: upload a Keras model, a .tflite made elsewhere, or a dataset (with its preprocessing); browse them."""

from __future__ import annotations

import streamlit as st

from dashboard import auth, ui
from dashboard.services import reads, uploads
from dashboard.services.access import Action
from qcore.qtyping import SCORING_LABELS, Job

st.title("Models & data")
lab = ui.current()

left, right = st.columns(2)
with left, st.form("models_model_form", clear_on_submit=True, enter_to_submit=False):
    st.subheader("Add a model")
    file = st.file_uploader("Keras model: .keras, .h5, or a zipped SavedModel", type=["keras", "h5", "zip"],
                            key="models_model_file")
    name = st.text_input("name (optional)", key="models_model_name")
    # admins may vouch for a file the loading policy refuses (Lambda layers, custom objects, file ops)
    trusted = auth.can(Action.TRUST) and st.checkbox(
        "trusted upload (admin): load it even with Lambda layers, custom objects or file ops", key="models_trusted")
    if st.form_submit_button("Add model", type="primary"):
        if file is None:
            st.error("choose a model file first")
        else:
            with ui.guard(f"could not add {file.name}"), st.spinner(f"loading {file.name}"):
                model_id = uploads.add_model(lab, file.name, file.getvalue(), name, trusted=bool(trusted),
                                            who=auth.who())
                st.success(f"model #{model_id} stored")

with right, st.form("models_data_form", clear_on_submit=True, enter_to_submit=False):
    st.subheader("Add a dataset")
    file = st.file_uploader("data: .npz (x_train, y_train, x_test, y_test) or a zip of class folders",
                            type=["npz", "zip"], key="models_data_file")
    c1, c2 = st.columns(2)
    scale = c1.number_input("input scale", value=1.0, format="%.6g", key="models_data_scale",
                            help="the model sees x · scale + offset; e.g. 1/255 for 8-bit pixels")
    offset = c2.number_input("input offset", value=0.0, format="%.6g", key="models_data_offset")
    name = st.text_input("name (optional)", key="models_data_name")
    stored = reads.models(lab.db_key)
    model_names = {int(r.id): f"#{r.id} {r.name} (input {r.input_shape})" for r in stored.itertuples()}
    for_model = st.selectbox("size images for model (zip of class folders)", [None, *model_names],
                             format_func=lambda i: "–" if i is None else model_names[i], key="models_data_for")
    b1, b2 = st.columns(2)
    upload = b1.form_submit_button("Add dataset", type="primary")
    digits = b2.form_submit_button("Add built-in digits", help="scikit-learn's 8×8 digits, x in [0, 16]")
    if upload:
        if file is None:
            st.error("choose a data file first: an .npz or a .zip of class folders (the uploader refuses other "
                     "types, such as .txt)")
        else:
            with ui.guard(f"could not add {file.name}"), st.spinner(f"reading {file.name}"):
                dataset_id = uploads.add_dataset(lab, file.name, file.getvalue(), input_scale=scale,
                                                 input_offset=offset, name=name, for_model=for_model,
                                                 who=auth.who())
                st.success(f"dataset #{dataset_id} stored")
    if digits:
        with ui.guard("could not add digits"):
            dataset_id = uploads.add_digits(lab, input_scale=scale, input_offset=offset, who=auth.who())
            st.success(f"dataset #{dataset_id} stored")

st.subheader("Bring your own .tflite")
st.caption("A .tflite from the eIQ model zoo, Ultralytics, onnx2tf or MediaPipe becomes a variant of a tflite-only "
           "model: inspect, lint, time it here and on boards, compare it. With a float .tflite of the same network "
           "as reference and a dataset (its input preprocessing is the dataset's), it is scored too: top-1 for "
           "class scores, MSE against the reference for detectors and landmarks.")
with st.form("models_tflite_form", clear_on_submit=True, enter_to_submit=False):
    a, b = st.columns(2)
    tfile = a.file_uploader(".tflite model", type=["tflite"], key="models_tflite_file")
    rfile = b.file_uploader("float reference .tflite (optional)", type=["tflite"], key="models_tflite_reference")
    a, b = st.columns(2)
    tname = a.text_input("model name (optional)", key="models_tflite_name")
    data_rows = reads.datasets(lab.db_key)
    data_names = {int(r.id): f"#{r.id} {r.name} (scale {r.input_scale:g}, offset {r.input_offset:g})"
                  for r in data_rows.itertuples()}
    tdata = b.selectbox("evaluate on dataset (optional)", [None, *data_names], key="models_tflite_dataset",
                        format_func=lambda i: "– not now" if i is None else data_names[i],
                        help="add the data above first, with the input scale and offset this model expects")
    if st.form_submit_button("Import .tflite", type="primary"):
        if tfile is None:
            st.error("choose a .tflite file first")
        else:
            with ui.guard(f"could not import {tfile.name}"):
                ref = (rfile.name, rfile.getvalue()) if rfile is not None else None
                uploads.add_tflite(lab, tfile.name, tfile.getvalue(), reference=ref, name=tname, dataset_id=tdata,
                                   who=auth.who())
                st.rerun()


def show_import(job: Job) -> None:
    r = job.result or {}
    st.markdown(f"model #{r.get('model_id')} **{ui.md(r.get('model'))}** (tflite-only), variant #{r.get('variant_id')} "
                f"**{ui.md(r.get('variant'))}**: {ui.md(r.get('verdict'))}; scored by **{SCORING_LABELS.get(r.get('scoring', ''))}**")
    if r.get("accuracy") is not None:
        st.markdown(f"accuracy {ui.pct(r['accuracy'])}, agreement with the reference {ui.pct(r.get('agreement'))}")
    out = r.get("output_metrics") or {}
    shown = [f"{label} {out[k]:.4g}" for k, label in (("output_mse", "MSE"), ("output_cosine", "cosine"),
                                                      ("output_max_abs_error", "largest error"))
             if out.get(k) is not None]
    if shown:
        st.markdown("against the reference's outputs: " + ", ".join(shown))
    for note in r.get("notes", []):
        st.warning(note, icon=":material/warning:")


ui.job_panel(ui.latest_job(lab, ("import_tflite",)), key="models_tflite_job", on_done=show_import)

st.subheader("Stored models")
models = reads.models(lab.db_key)
if models.empty:
    st.caption("none yet")
else:
    st.dataframe(ui.short_sha(models.drop(columns=["source_path"])), hide_index=True, width="stretch")
    st.caption("format tflite: a tflite-only model (imported .tflite files or a report); there is no Keras source "
               "to convert or train again")

if not models.empty:
    with st.expander("Model summary", expanded=False):
        summary_of = ui.pick_model(lab, key="models_summary_model")
        with ui.guard("no summary"):
            if summary_of is not None:
                row = models[models["id"] == summary_of].iloc[0]
                summary = reads.model_summary(lab.db_key, int(summary_of))
                a, b, c, d = st.columns(4)
                a.metric("layers", summary.layers)
                b.metric("parameters", "–" if summary.params is None else f"{summary.params:,}")
                c.metric("input", str(row["input_shape"]))
                d.metric("BatchNormalization", summary.batchnorm)
                st.caption("layer classes: " + ", ".join(f"{n}× {c}" for c, n in summary.classes))
                if summary.custom:
                    st.warning("custom layers (code of their own; QAT and some converters refuse them): "
                               + ", ".join(summary.custom), icon=":material/warning:")

st.subheader("Stored datasets")
data = reads.datasets(lab.db_key)
if data.empty:
    st.caption("none yet")
else:
    st.dataframe(ui.short_sha(data.drop(columns=["stored_path"])), hide_index=True, width="stretch")

if not models.empty and not data.empty:
    st.subheader("Does a dataset fit a model?")
    st.caption("Shape, value range after the input scale and offset, and labels against the model's outputs: "
               "checked here, before a job fails on them.")
    a, b = st.columns(2)
    with a:
        check_model = ui.pick_model(lab, key="models_check_model")
    with b:
        check_data = ui.pick_dataset(lab, key="models_check_dataset")
    findings = ui.data_findings(lab, check_model, check_data)
    ui.show_findings(findings)
    if not findings:
        st.success("the dataset fits the model", icon=":material/check_circle:")
    elif not any(severity == "error" for severity, _ in findings):
        st.info("shape and labels fit the model; read the warning above before a job runs on this pair",
                icon=":material/info:")

"""/models: upload a Keras model or a dataset (with its preprocessing), browse what is stored."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.services import reads, uploads

st.title("Models & data")
lab = ui.current()

left, right = st.columns(2)
with left, st.form("models_model_form", clear_on_submit=True):
    st.subheader("Add a model")
    file = st.file_uploader("Keras model: .keras, .h5, or a zipped SavedModel", type=["keras", "h5", "zip"],
                            key="models_model_file")
    name = st.text_input("name (optional)", key="models_model_name")
    if st.form_submit_button("Add model", type="primary"):
        if file is None:
            st.error("choose a model file first")
        else:
            with ui.guard(f"could not add {file.name}"), st.spinner(f"loading {file.name}"):
                model_id = uploads.add_model(lab, file.name, file.getvalue(), name)
                st.success(f"model #{model_id} stored")

with right, st.form("models_data_form", clear_on_submit=True):
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
            st.error("choose a data file first")
        else:
            with ui.guard(f"could not add {file.name}"), st.spinner(f"reading {file.name}"):
                dataset_id = uploads.add_dataset(lab, file.name, file.getvalue(), input_scale=scale,
                                                 input_offset=offset, name=name, for_model=for_model)
                st.success(f"dataset #{dataset_id} stored")
    if digits:
        with ui.guard("could not add digits"):
            dataset_id = uploads.add_digits(lab, input_scale=scale, input_offset=offset)
            st.success(f"dataset #{dataset_id} stored")

st.subheader("Stored models")
models = reads.models(lab.db_key)
if models.empty:
    st.caption("none yet")
else:
    st.dataframe(models.drop(columns=["source_path"]), hide_index=True, width="stretch")

st.subheader("Stored datasets")
data = reads.datasets(lab.db_key)
if data.empty:
    st.caption("none yet")
else:
    st.dataframe(data.drop(columns=["stored_path"]), hide_index=True, width="stretch")

"""TransferScope dashboard: routes to the pages and draws the shared sidebar. Run: streamlit run app.py"""
import streamlit as st

import ui

st.set_page_config(layout="wide", page_title="TransferScope", page_icon=":material/biotech:")
current = st.navigation([ui.page(name) for name in ui.PAGES])

with st.sidebar:
    with ui.guard():
        st.text_input("Dataset folder", value=ui.default_data_dir(), key="data_dir",
                      help="An image folder: DIR/<class>/* (split for you) or DIR/train/<class>/* + DIR/test/<class>/*")
        ui.sidebar_job_status()

current.run()

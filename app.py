"""TransferScope dashboard: routes to the pages and draws the shared sidebar. Run: streamlit run app.py"""
import streamlit as st

import ui

st.set_page_config(layout="wide", page_title="TransferScope", page_icon=":material/biotech:")
current = st.navigation([ui.page(name) for name in ui.PAGES])

with st.sidebar:
    with ui.guard():
        ui.sharing_badge()
        ui.dataset_folder_input()
        ui.sidebar_job_status()

current.run()

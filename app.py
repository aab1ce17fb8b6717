"""TransferScope dashboard: routes to the pages and draws the shared sidebar. Run: streamlit run app.py"""
import streamlit as st

from dashboard import errors, widgets

st.set_page_config(layout="wide", page_title="TransferScope", page_icon=":material/biotech:")
current = st.navigation([widgets.page(name) for name in widgets.PAGES])

with st.sidebar:
    with errors.guard():
        widgets.sharing_badge()
        widgets.dataset_folder_input()
        widgets.sidebar_job_status()

current.run()

"""TransferScope dashboard: the page list, the router and the shared sidebar. Run: streamlit run app.py"""
import streamlit as st

from dashboard import views

st.set_page_config(layout="wide", page_title="TransferScope", page_icon=":material/biotech:")
PAGES = [  # menu order; the first is the home page "/", the others live at "/<file name>"
    st.Page(views.path("dataset"), title="Dataset", icon=":material/photo_library:", default=True),
    st.Page(views.path("train"), title="Train", icon=":material/model_training:"),
    st.Page(views.path("results"), title="Results", icon=":material/insights:"),
    st.Page(views.path("compare"), title="Compare", icon=":material/compare_arrows:"),
    st.Page(views.path("whatif"), title="What-if", icon=":material/tune:"),
    st.Page(views.path("featuremap"), title="Feature map", icon=":material/scatter_plot:"),
    st.Page(views.path("predict"), title="Predict", icon=":material/image_search:"),
    st.Page(views.path("share"), title="Share", icon=":material/share:"),
]
current = st.navigation(PAGES)  # before the imports below, so the menu shows while they load on a fresh server

from dashboard import errors, state, widgets  # noqa: E402 - loads torch and scikit-learn: seconds on a fresh server

with st.sidebar:
    with errors.guard():
        state.start_demo_comparison()
        widgets.sharing_badge()
        widgets.dataset_folder_input()
        widgets.sidebar_job_status()

current.run()

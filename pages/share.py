"""Share page: how to share the dashboard, deep links, report and bundle downloads, bundle import, owner unlock."""
import streamlit as st

import ui
from core.analysis import run_labels
from core.sharing import run_link

HOW_TO = """
**`make share`** serves this dashboard on your network in **viewer mode**: classmates browse the dataset,
results and comparisons and download reports, but cannot launch or cancel training, delete or import runs,
or change the dataset folder. The owner token is printed when that server starts (or run
`python -m core owner-token`); on the shared dashboard, type it on this page to unlock actions in your own
browser. `make run` serves it on localhost for you alone, with everything unlocked. The links below open a run
on the Results page.
"""


def owner_panel() -> None:
    st.subheader("Owner")
    if ui.can_act():
        st.success("Owner actions are unlocked in this browser session.", icon=":material/lock_open:")
        st.button("Lock again", key="lock", on_click=ui.lock, icon=":material/lock:")
        return
    token_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
    token = token_col.text_input("Owner token", type="password", key="owner_token",
                                 help="printed by `make share`, or run `python -m core owner-token`")
    if button_col.button("Unlock", key="unlock", icon=":material/lock_open:", width="stretch"):
        if ui.unlock(token):
            st.rerun()
        st.error("Wrong token: actions stay locked. Copy the token printed by `make share`.", icon=":material/error:")


def show_links(run_ids: list[str], labels: dict[str, str]) -> None:
    base = ui.app_url()
    st.dataframe({"run": [labels[run_id] for run_id in run_ids], "link": [run_link(i, base) for i in run_ids]},
                 hide_index=True, key="share_links", column_config={"link": st.column_config.LinkColumn("link")})


def download(column, label: str, make_data, file_name: str, mime: str, key: str, icon: str) -> None:
    with column, ui.guard():
        st.download_button(label, make_data(), file_name=file_name, mime=mime, key=key, icon=icon,
                           on_click="ignore", width="stretch")


def export_runs(runs: list[dict]) -> None:
    st.subheader("Export runs")
    labels = run_labels(runs)
    chosen = st.multiselect("Runs to export", list(labels), default=list(labels), format_func=labels.get,
                            key="share_runs")
    if not chosen:
        st.caption("Pick at least one run to export.")
        return
    show_links(chosen, labels)
    html_col, md_col, zip_col = st.columns(3)
    download(html_col, "HTML report", lambda: ui.report(chosen, "html"), "transferscope-report.html",
             "text/html", "download_html", ":material/html:")
    download(md_col, "Markdown report", lambda: ui.report(chosen, "md"), "transferscope-report.md",
             "text/markdown", "download_md", ":material/description:")
    download(zip_col, "Run bundle (zip)", lambda: ui.bundle(chosen), "transferscope-runs.zip",
             "application/zip", "download_bundle", ":material/folder_zip:")
    st.caption("The HTML report is one self-contained file (charts included); the bundle holds the runs "
               "for another copy of TransferScope to import below.")


def import_runs() -> None:
    st.subheader("Import runs")
    allowed = ui.read_only_note("import runs")
    upload = st.file_uploader("Run bundle (zip)", type="zip", key="bundle_upload", disabled=not allowed)
    if st.button("Import runs", key="import_bundle", disabled=upload is None or not allowed, icon=":material/upload:"):
        with ui.guard():
            imported = ui.import_bundle(upload)
            if imported:
                st.success(f"Imported {len(imported)} run(s): {', '.join(imported)}", icon=":material/check:")
            else:
                st.info("Nothing new: every run in this bundle is already here.", icon=":material/info:")


st.title("Share")
st.markdown(HOW_TO)
with ui.guard():
    if ui.viewer_mode():
        owner_panel()
    runs = ui.list_runs()
    if runs:
        export_runs(runs)
    else:
        ui.no_runs_hint()
import_runs()

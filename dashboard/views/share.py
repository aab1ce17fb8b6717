"""Share page: how to share the dashboard, deep links, report and bundle downloads, bundle import, owner unlock."""
import streamlit as st

from core import sharing
from core.errors import TransferScopeError
from core.records import RunRecord
from core.report import check_one_dataset, escape_markdown
from core.sharing import run_link
from dashboard import access, errors, state, views, widgets

HOW_TO = """
**`make share`** serves this dashboard on your network in **viewer mode**: classmates browse the dataset,
results and comparisons and download reports, but cannot launch or cancel training, delete or import runs,
or change the dataset folder. A fresh owner token is printed each time that server starts; type it on this
page, in a browser on the server machine itself, to unlock actions in that browser. `make run` serves it on
localhost for you alone, with everything unlocked. The links below open a run on the Results page.
"""
THREAT_MODEL = """
**Who sees what.** Anyone who can reach a shared dashboard sees the served dataset's images, every stored
run, its reports and bundles (viewers' downloads are rate-limited); error details and images outside the
dataset stay hidden from them, and they see paths only relative to the served dataset. **The token** unlocks the owner's actions (train, cancel, delete, import,
rescan, other folders) for one browser session; it is accepted only from the server machine, because
**everything crosses the network as plain HTTP**: pages, images, downloads, and a token typed elsewhere.
Bundles carry records and predictions, never models (pickles run code when loaded). **The server** answers
only its own names (no DNS-rebinding page gets a session), no other site may frame it, viewers upload nothing,
and the owner's What-if refits go before viewers', whose refits are rate-limited.
"""
REMOTE_UNLOCK = ("Unlock from a browser on the server machine itself (its localhost address): this page travels "
                 "unencrypted, so a token typed here could be read by anyone on the network.")


def owner_panel() -> None:
    st.subheader("Owner")
    if access.can_act():
        st.success("Owner actions are unlocked in this browser session.", icon=":material/lock_open:")
        st.button("Lock again", key="lock", on_click=access.lock, icon=":material/lock:")
        return
    local = access.client_is_local()
    if not local:
        st.info(REMOTE_UNLOCK, icon=":material/lock:")
    token_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
    token = token_col.text_input("Owner token", type="password", key="owner_token", disabled=not local,
                                 help="printed by `make share`, or run `python -m core owner-token --new`")
    if button_col.button("Unlock", key="unlock", icon=":material/lock_open:", width="stretch", disabled=not local):
        if access.unlock(token):
            st.rerun()
        st.error("Wrong token: actions stay locked. Copy the token printed by `make share`.", icon=":material/error:")


def app_url() -> str:
    """The dashboard's root URL as this browser sees it ("" when unknown), for links to share."""
    return sharing.app_base_url(st.context.url, views.names())


def show_links(run_ids: list[str], labels: dict[str, str]) -> None:
    base = app_url()
    st.dataframe({"run": [labels[run_id] for run_id in run_ids], "link": [run_link(i, base) for i in run_ids]},
                 hide_index=True, key="share_links", column_config={"link": st.column_config.LinkColumn("link")})


def download(column, label: str, make_data, file_name: str, mime: str, key: str, icon: str,
             disabled: bool = False) -> None:
    """A download button whose file is built only when clicked."""
    column.download_button(label, make_data, file_name=file_name, mime=mime, key=key, icon=icon,
                           on_click="ignore", width="stretch", disabled=disabled)


def export_runs(runs: list[RunRecord]) -> None:
    st.subheader("Export runs")
    listed = widgets.dataset_runs(runs, "share_all_data")
    labels = widgets.picker_labels(listed)
    chosen = st.multiselect("Runs to export", list(labels), default=list(labels), format_func=labels.get,
                            key="share_runs" if len(listed) == len(runs) else "share_runs_this_dataset")  # the switch: a fresh default
    if not chosen:
        st.caption("Pick at least one run to export.")
        return
    show_links(chosen, labels)
    reportable = downloadable = False
    try:  # checked here, where the reason shows: a failed download would say it only in the server's log
        state.check_downloads()
        downloadable = True
        check_one_dataset([run for run in listed if run.run_id in chosen])
        reportable = True
    except TransferScopeError as reason:
        errors.show_failure(f"No {'report' if downloadable else 'download'} now: {reason}.")
    html_col, md_col, zip_col = st.columns(3)
    download(html_col, "HTML report", state.deferred_report(chosen, "html", app_url()), "transferscope-report.html",
             "text/html", "download_html", ":material/html:", disabled=not reportable)
    download(md_col, "Markdown report", state.deferred_report(chosen, "md", app_url()), "transferscope-report.md",
             "text/markdown", "download_md", ":material/description:", disabled=not reportable)
    download(zip_col, "Run bundle (zip)", state.deferred_bundle(chosen), "transferscope-runs.zip",
             "application/zip", "download_bundle", ":material/folder_zip:", disabled=not downloadable)
    st.caption("The HTML report is one self-contained file (charts included); the bundle holds the runs "
               "for another copy of TransferScope to import below.")


def import_runs() -> None:
    st.subheader("Import runs")
    if not access.read_only_note("import runs"):
        return  # no uploader at all: a viewer's files never reach the server (serve.py refuses them too)
    upload = st.file_uploader("Run bundle (zip)", type="zip", key="bundle_upload")
    if st.button("Import runs", key="import_bundle", disabled=upload is None, icon=":material/upload:"):
        with errors.guard():
            imported = state.import_bundle(upload)
            if imported:
                st.success(f"Imported {len(imported)} run(s): {escape_markdown(', '.join(imported))}",
                           icon=":material/check:")
            else:
                st.info("Nothing new: every run in this bundle is already here.", icon=":material/info:")


st.title("Share")
st.markdown(HOW_TO)
with st.expander("Threat model: who sees what, what the token protects, what crosses the network"):
    st.markdown(THREAT_MODEL)
with errors.guard():
    if access.viewer_mode():
        owner_panel()
    runs = state.list_runs()
    if runs:
        export_runs(runs)
    else:
        widgets.no_runs_hint()
import_runs()

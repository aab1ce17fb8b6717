"""The Streamlit dashboard: state (caches, jobs, scans), access (viewer/owner), errors, widgets; pages in views/."""

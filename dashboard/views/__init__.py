"""The dashboard's pages, one script each; app.py lists them in st.navigation.

The folder is not named `pages/`: Streamlit would take that for a legacy multipage app and show its file
names as the menu until st.navigation first ran. A page's file name is also its URL path (`/train`).
"""
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """The script of page `name`, e.g. `path("train")`."""
    return FOLDER / f"{name}.py"


def names() -> list[str]:
    """Every page's name (its file name and URL path)."""
    return sorted(script.stem for script in FOLDER.glob("*.py") if script.stem != "__init__")

"""Read-only sharing: viewer mode switch, owner token, the paths viewers may read, deep links (core.sharing)."""
import os
import stat

import pytest

from core.sharing import app_base_url, is_owner, is_within, owner_token, run_link, viewer_mode

PAGES = ["dataset", "train", "results", "compare", "share"]


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), (" YES ", True), ("0", False),
                                             ("", False), (None, False)])
def test_viewer_mode_follows_the_environment(value, expected):
    environ = {} if value is None else {"TRANSFERSCOPE_VIEWER": value}
    assert viewer_mode(environ) is expected


def test_owner_token_is_created_once_and_private(tmp_path):
    token = owner_token(tmp_path / "cache")
    assert len(token) >= 20 and owner_token(tmp_path / "cache") == token
    assert stat.S_IMODE(os.stat(tmp_path / "cache" / "owner_token").st_mode) == 0o600
    assert owner_token(tmp_path / "other") != token


def test_is_owner_accepts_only_the_token(tmp_path):
    token = owner_token(tmp_path)
    assert is_owner(token, tmp_path) and is_owner(f"  {token}\n", tmp_path)
    assert not is_owner(token[:-1], tmp_path)
    assert not is_owner("", tmp_path) and not is_owner(None, tmp_path)


def test_is_within_resolves_dots_and_symlinks(tmp_path):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (data / "cat" / "link.png").symlink_to(tmp_path / "secret.png")
    assert is_within(data / "cat" / "1.png", data)
    assert is_within(str(data / "cat" / ".." / "cat" / "1.png"), str(data))
    assert not is_within(data / ".." / "secret.png", data)
    assert not is_within(data / "cat" / "link.png", data)  # a symlink out of the dataset
    assert not is_within(tmp_path / "data-other" / "1.png", data)  # a sibling sharing the prefix
    assert not is_within("/etc/passwd", data)


@pytest.mark.parametrize("page_url, expected", [
    ("http://host:8501/share", "http://host:8501"),
    ("http://host:8501/", "http://host:8501"),
    ("http://host:8501", "http://host:8501"),
    ("https://example.org/app/results", "https://example.org/app"),
    ("http://share", "http://share"),
    (None, ""),
])
def test_app_base_url_drops_the_page(page_url, expected):
    assert app_base_url(page_url, PAGES) == expected


def test_run_link():
    assert run_link("20260101-svm-none-ab12") == "results?run=20260101-svm-none-ab12"
    assert run_link("r1", "http://host:8501/") == "http://host:8501/results?run=r1"

"""Read-only sharing: viewer mode switch, owner token, the paths viewers may read, deep links (core.sharing)."""
import os
import socket
import stat
import threading
import time
import tomllib
from pathlib import Path

import pytest

from builders import make_record
from core.errors import ConfigError
from core.sharing import (HIDDEN_PATH, HOSTS_ENV, LOOPBACK_HOSTS, OTHER_FOLDER, PathNames, PrioritySlot, Throttle,
                          admit, allowed_hosts, app_base_url, is_loopback, is_owner, is_within, owner_token, run_link,
                          viewer_mode)

ROOT = Path(__file__).resolve().parents[1]

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


def test_fresh_token_replaces_the_old_one_and_stays_private(tmp_path):
    old = owner_token(tmp_path)
    new = owner_token(tmp_path, fresh=True)
    assert new != old and owner_token(tmp_path) == new
    assert is_owner(new, tmp_path) and not is_owner(old, tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "owner_token").st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owner_token"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_token_file_readable_by_others_is_refused(tmp_path, mode):
    token = owner_token(tmp_path)
    os.chmod(tmp_path / "owner_token", mode)
    with pytest.raises(ConfigError, match=f"mode {mode:o}.*--new"):
        owner_token(tmp_path)
    with pytest.raises(ConfigError):
        is_owner(token, tmp_path)  # fails closed: nobody unlocks with a token others may have read
    assert owner_token(tmp_path, fresh=True) != token


def test_token_file_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_text("guessable")
    os.chmod(tmp_path / "elsewhere", 0o600)
    (tmp_path / "owner_token").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="not a private file"):
        owner_token(tmp_path)


@pytest.mark.parametrize("candidate", ["jeton-é", "токен", "🔑" * 22, "\u00e9" * 22])
def test_non_ascii_token_is_refused_without_crashing(tmp_path, candidate):
    owner_token(tmp_path)
    assert is_owner(candidate, tmp_path) is False


@pytest.mark.parametrize("ip, expected", [(None, True), ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                          ("::ffff:127.0.0.1", True), ("192.168.1.20", False), ("10.0.0.1", False),
                                          ("fe80::1", False), ("not an ip", False)])
def test_is_loopback(ip, expected):
    assert is_loopback(ip) is expected


def test_throttle_allows_a_burst_then_says_how_long_to_wait():
    throttle = Throttle(max_events=2, per_s=60)
    assert throttle.wait_s(now=100.0) == 0 and throttle.wait_s(now=101.0) == 0
    assert throttle.wait_s(now=110.0) == pytest.approx(50.0)
    assert throttle.wait_s(now=160.0) == 0  # the first event is a minute old; the refused one never counted
    assert throttle.wait_s(now=161.0) == 0
    assert throttle.wait_s(now=162.0) == pytest.approx(58.0)


def test_plain_streamlit_run_listens_on_this_machine_only():
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "127.0.0.1"
    assert server["allowedHosts"] == ["localhost", "127.0.0.1", "::1"]  # websockets from DNS-rebinding pages refused
    assert 1 <= server["maxUploadSize"] <= 100  # megabytes: a bundle of records and predictions, no models


def test_make_share_opens_the_network_only_in_viewer_mode_with_a_fresh_token():
    makefile = (ROOT / "Makefile").read_text()
    share = makefile.split("\nshare:", 1)[1].split("\n\n", 1)[0]
    assert "owner-token --new" in share
    assert "--server.address 0.0.0.0" in share and "TRANSFERSCOPE_VIEWER=1" in share
    assert "--client.showErrorDetails none" in share
    assert "--browser.serverAddress" in share  # else Streamlit looks up the external address on the internet
    others = makefile.replace(share, "")
    assert "0.0.0.0" not in others, "only `make share` may listen on the network"
    assert makefile.count("streamlit run serve.py") == 2 and "streamlit run app.py" not in makefile


def test_allowed_hosts_are_loopback_unless_shared():
    assert allowed_hosts(share=False, environ={HOSTS_ENV: "lab.example"}) == list(LOOPBACK_HOSTS)
    shared = allowed_hosts(share=True, environ={HOSTS_ENV: " Lab.Example ,, "})
    assert shared[:3] == list(LOOPBACK_HOSTS) and shared[-1] == "lab.example"
    assert socket.gethostname().lower() in shared
    assert all(host.startswith("[") and host.endswith("]") for host in shared if ":" in host)  # IPv6 as in Host


def test_path_names_show_the_served_dataset_and_the_cache_by_name_only(tmp_path):
    data, cache = tmp_path / "photos" / "birds", tmp_path / "cache"
    (data / "test").mkdir(parents=True)
    (data / "test" / "link.png").symlink_to(tmp_path / "secret.png")
    names = PathNames(data, cache)
    assert names.name(data) == "birds" and names.name(data / "test" / "a.png") == "birds/test/a.png"
    assert names.name(cache / "features" / "k") == "cache/features/k"
    assert names.name(data / "test" / "link.png") == HIDDEN_PATH  # a symlink out of the dataset
    assert names.name(tmp_path / "photos" / "birds-private", OTHER_FOLDER) == OTHER_FOLDER
    message = f"no features under '{cache}/features'; image {tmp_path}/x.png or ~/y.png unreadable, see a/b."
    assert names.text(message) == f"no features under 'cache/features'; image {HIDDEN_PATH} or {HIDDEN_PATH} " \
                                  "unreadable, see a/b."


def test_path_names_rename_a_record_and_its_predictions_for_a_bundle(tmp_path):
    import pandas as pd

    data = tmp_path / "birds"
    record = make_record(dataset={"root": str(data), "skipped": [{"path": f"{data}/bad.png", "reason": "empty"}]},
                         config={"data": str(data), "cache_dir": str(tmp_path / "cache"), "epochs": 3},
                         class_weight="none")
    predictions = pd.DataFrame({"path": [f"{data}/test/a.png", f"{data}/test/b.png"], "true": [0, 1]})
    shown, table = PathNames(data, tmp_path / "cache").bundle_run(record, predictions)
    assert shown.dataset.root == "birds" and shown.dataset.skipped == [{"path": "birds/bad.png", "reason": "empty"}]
    assert shown.config == {"data": "birds", "cache_dir": "cache", "epochs": 3} and shown.class_weight == "none"
    assert table["path"].tolist() == ["birds/test/a.png", "birds/test/b.png"] and table["true"].tolist() == [0, 1]
    assert record.dataset.root == str(data)  # the stored record is untouched
    elsewhere, _ = PathNames(tmp_path / "other", tmp_path / "cache").bundle_run(record, None)
    assert elsewhere.dataset.root == OTHER_FOLDER and elsewhere.config["data"] == HIDDEN_PATH


def test_admit_counts_only_when_every_throttle_allows():
    session, everyone = Throttle(max_events=2, per_s=60), Throttle(max_events=3, per_s=60)
    assert admit(session, everyone) == 0 and admit(session, everyone) == 0
    assert admit(session, everyone) > 0  # the session's own limit
    other_session = Throttle(max_events=2, per_s=60)
    assert admit(other_session, everyone) == 0
    assert admit(other_session, everyone) > 0  # all sessions' limit: 3 in total
    assert other_session.wait_s(count=False) == 0, "a refused event counts nowhere"


def test_priority_slot_serves_a_waiting_owner_before_waiting_viewers():
    slot, order = PrioritySlot(), []
    assert slot.acquire(owner=False, timeout_s=1)

    def take(name: str, owner: bool) -> None:
        assert slot.acquire(owner, timeout_s=10)
        order.append(name)
        slot.release()

    threads = [threading.Thread(target=take, args=(f"viewer {i}", False)) for i in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: slot.waiting() == (0, 3))
    threads.append(threading.Thread(target=take, args=("owner", True)))
    threads[-1].start()
    wait_for(lambda: slot.waiting() == (1, 3))
    slot.release()
    for thread in threads:
        thread.join(10)
    assert order[0] == "owner" and sorted(order[1:]) == ["viewer 0", "viewer 1", "viewer 2"]


def test_priority_slot_gives_up_after_the_timeout():
    slot = PrioritySlot()
    assert slot.acquire(owner=True, timeout_s=1)
    assert not slot.acquire(owner=True, timeout_s=0.05) and slot.waiting() == (0, 0)
    slot.release()
    assert slot.acquire(owner=False, timeout_s=0.05)


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)

# Two commands for a newcomer: `make run` and `make test`. Both create .venv from requirements.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
CACHE_DIR ?= $(or $(TRANSFERSCOPE_CACHE_DIR),cache)
# The dashboard and every command's --cache-dir read the cache folder from this variable
export TRANSFERSCOPE_CACHE_DIR := $(CACHE_DIR)
DEMO := $(CACHE_DIR)/datasets/digits-demo
PORT ?= 8501
# The name classmates type to reach `make share` (printed at start); naming it spares Streamlit a lookup of
# this machine's external address on the internet
SHARE_HOST ?= $(shell hostname)
DATA ?= $(DEMO)

.PHONY: install run share test test-fast bench bench-scale browser-deps demo-data clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

$(DEMO)/train: | $(STAMP)
	$(BIN)/python -m core demo-data --out $(DEMO)

demo-data: $(DEMO)/train

## Dashboard for you alone, on http://localhost:$(PORT) (serve.py: app.py behind Host and framing checks)
run: $(STAMP) $(DEMO)/train
	TRANSFERSCOPE_DATA=$(DATA) \
	$(BIN)/streamlit run serve.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true

## Dashboard on the network for classmates, read-only; a fresh owner unlock token is printed at each start.
## serve.py answers only this machine's names (add others in TRANSFERSCOPE_HOSTS), websocket included, so
## Streamlit's own loopback-only allowedHosts (.streamlit/config.toml) is lifted here.
share: $(STAMP) $(DEMO)/train
	$(BIN)/python -m core owner-token --new
	TRANSFERSCOPE_DATA=$(DATA) TRANSFERSCOPE_VIEWER=1 \
	$(BIN)/streamlit run serve.py --server.address 0.0.0.0 --server.port $(PORT) --server.headless true \
		--client.showErrorDetails none --server.allowedHosts '*' --browser.serverAddress $(SHARE_HOST)

## Debian's Chromium + ChromeDriver for the browser tests (installed when missing and running as root)
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "Browser tests need Chromium: run 'sudo apt-get install chromium chromium-driver'"; \
	fi

test: $(STAMP) browser-deps
	$(BIN)/pytest

## Unit tests only (skips the slow end-to-end and browser tests)
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not browser"

bench: $(STAMP) $(DEMO)/train
	$(BIN)/python -m bench

## The default grid end to end on 30k synthetic small photos: time and peak memory per step (about 11 min, 2 cores)
bench-scale: $(STAMP)
	$(BIN)/python -m bench.photo_scale --out $(CACHE_DIR)/bench-scale

clean:
	rm -rf $(CACHE_DIR)/features $(CACHE_DIR)/openvino $(CACHE_DIR)/index $(CACHE_DIR)/maps $(CACHE_DIR)/runs \
		$(CACHE_DIR)/owner_token .pytest_cache

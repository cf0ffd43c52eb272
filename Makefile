# clawweb: `make run` serves the chat on http://127.0.0.1:8080, `make test` runs the whole suite, `make unit` the quick part.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

comma := ,

.PHONY: run test unit lint format bench screenshots system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files re-run pip only when the pinned requirements change.
$(VENV)/.deps: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.deps

run: $(VENV)/.deps
	scripts/run.sh

# What the tests drive, from Debian when missing (apt-get, as root or through sudo): nginx-light, caddy, chromium,
# redis-server, postgresql, openssl, systemd (for systemd-analyze) and fonts-noto-cjk. See scripts/system-deps.sh.
system-deps:
	scripts/system-deps.sh

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev-deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Three processes, each module on one of them (its servers and module fixtures stay together): the suite waits on
# real servers far more than it computes (11 minutes here with three; four gain a minute but starve the browser
# tests' pages of CPU on 2 cores).
test: $(VENV)/.dev-deps system-deps lint
	$(BIN)/python -m pytest -n 3 --dist loadfile

# The in-process tests alone (no simulator, gunicorn, Redis, nginx or browser): the quick loop, ~20 s here.
unit: $(VENV)/.dev-deps
	$(BIN)/python -m pytest -m "not integration"

# Loopback benchmark: simulator direct vs nginx vs the naive relay vs clawweb; prints markdown, writes
# bench/results/latest.{md,json,svg} (see bench/README.md). PART=name (or a,b) runs those parts alone, into
# bench/results/part-*.
bench: $(VENV)/.dev-deps system-deps
	$(BIN)/python bench/run.py $(foreach part,$(subst $(comma), ,$(PART)),--part $(part))

# The README's pictures, docs/screenshot-{light,dark}.png: the chat page mid-answer in Debian's Chromium.
screenshots: $(VENV)/.dev-deps system-deps
	CLAWWEB_README_SCREENSHOTS=1 $(BIN)/python -m pytest tests/test_readme_screenshots.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Set-up and everyday commands. Each target creates .venv and installs what it needs on a fresh Debian machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-smoke soak run check clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

# Debian packages the tests use, installed only when missing: the MQTT broker, and ffmpeg for MP3 transcoding.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests:$$missing"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(BIN)/b24-bridge demo

test: $(STAMP) system-deps
	$(BIN)/pytest -q -m "not soak"

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/mypy bridge

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-smoke: $(STAMP)
	$(BIN)/python -m bench.run --smoke

soak: $(STAMP) system-deps
	$(BIN)/pytest -q -m soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache

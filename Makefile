# The README's two set-up commands are `make demo` and `make test`; both create .venv/ when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.breakeven-installed
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow test-all lint format bench clean fashion-mnist chromium

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Real FashionMNIST comes from Debian's package; install it when we can (root + apt-get).
fashion-mnist:
	@if [ -n "$$BREAKEVEN_DATA" ] && ls "$$BREAKEVEN_DATA"/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ -d $(FASHION) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		{ echo "could not install dataset-fashion-mnist; put the IDX files in \$$BREAKEVEN_DATA/fashion-mnist"; exit 1; }; \
	else echo "FashionMNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or put the IDX files in \$$BREAKEVEN_DATA/fashion-mnist"; exit 1; fi

# The quick learning-rate sweep of the MLP on real FashionMNIST (3 learning rates x 2 seeds,
# 2 runs at a time), its break-even points and conjecture verdicts. Resumable: run it again
# after a kill and it goes on where it stopped; a finished sweep is only analysed again.
demo: $(STAMP) fashion-mnist
	$(VENV)/bin/breakeven sweep mlp_fashion --scale quick --seeds 2 --workers 2 --out runs/demo
	$(VENV)/bin/breakeven report runs/demo --out runs/demo/report.html

# Headless Chromium renders the HTML report in a test; install Debian's package when we can
# (root with apt-get). Without it that one test is skipped, saying why.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package chromium (headless report test)"; \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
		echo "could not install chromium: the report rendering test will be skipped"; \
	else echo "chromium not found: the report rendering test will be skipped"; fi

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The multi-process and browser tests (torchrun, real signals, process pools, Ray, Chromium),
# end-to-end command lines that quicker tests cover in parts, the rest of big random families:
# minutes; CI runs them after `make test`.
test-slow: $(STAMP) chromium
	$(PY) -m pytest -q -m slow

test-all: $(STAMP) chromium
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache

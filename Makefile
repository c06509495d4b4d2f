# Two commands do all set-up on a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: run test lint bench clean-results

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The default workflow (config.yaml), offline on the embedded corpus, then the HTML report.
run: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --report results/report.html

# Unit, property and end-to-end tests (the tiny config through the snakemake command).
test: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests workflow bench
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakefmt --check Snakefile workflow/rules
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint

clean-results:
	rm -rf results/models results/activations results/sae results/features results/notebooks \
	       results/reports results/logs results/benchmarks results/report.html resources/corpora .snakemake

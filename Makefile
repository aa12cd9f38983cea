PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean wordnet

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(MAKE) wordnet
	touch $(STAMP)

# WordNet 3.0 for nltk METEOR, from Debian's wordnet-base + wordnet-sense-index (no PyPI package
# ships it). Never fails the install: without apt-get, METEOR raises an error naming this step.
WORDNET_DIR := $(VENV)/nltk_data/corpora/wordnet
wordnet:
	@if [ -f $(WORDNET_DIR)/lexnames ] && [ -f $(WORDNET_DIR)/data.noun ]; then \
	  echo "wordnet: already in $(WORDNET_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then \
	  tmp=$$(mktemp -d) && \
	  ( cd $$tmp && apt-get download wordnet-base wordnet-sense-index >/dev/null 2>&1 && \
	    for deb in *.deb; do dpkg -x $$deb x; done ) && \
	  mkdir -p $(WORDNET_DIR) && cp $$tmp/x/usr/share/wordnet/* $(WORDNET_DIR)/ && \
	  $(PY) -c "from radjax.metrics.text import write_lexnames; write_lexnames('$(WORDNET_DIR)')" && \
	  echo "wordnet: installed in $(WORDNET_DIR)" || \
	  echo "wordnet: apt-get download failed; METEOR will raise until WordNet is installed"; \
	  rm -rf $$tmp; \
	else \
	  echo "wordnet: apt-get/dpkg not available; METEOR will raise until WordNet is installed"; \
	fi

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 -q

# ruff: the F (pyflakes), B (bugbear) and I (import order) rules, and the format check.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m benchmarks.run --summary benchmarks/README.md

clean:
	rm -rf $(VENV) runs

# breakhis-clf: every command a user, a student or CI needs. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: help readme setup train test check-sync nbtest pytest docs bench bench-quick browser

help:            ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(STAMP)  ## make .venv with torch 2.14.1 and the package (editable, with dev tools)

train: $(STAMP)  ## the main job: train ResNet-50 on BreakHis (or the synthetic set when there is none)
	$(BIN)/breakhis-clf train $(ARGS)

check-sync: $(STAMP)  ## fail if nbdev-clean or nbdev-export would change a file
	bash .ci/check_sync.sh $(BIN)

nbtest: $(STAMP)  ## execute every notebook
	$(BIN)/nbdev-test --n-workers 2 --timing

browser:  ## headless Chromium for tests/test_docs.py (Debian, as root), when missing
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium not installed: the browser tests of tests/test_docs.py will be skipped"; fi; \
	fi

pytest: $(STAMP) browser  ## CLI, bad inputs, end-to-end runs, docs site in a browser
	$(BIN)/python -m pytest -q

test: check-sync nbtest pytest  ## run every test (what .ci/run runs)

readme: $(STAMP)  ## write README.md from nbs/index.ipynb
	$(BIN)/python docs/readme.py

docs: $(STAMP)  ## build the static docs site into _site/ (offline; no Quarto needed)
	bash docs/build.sh $(BIN)

bench-quick: $(STAMP)  ## quick throughput benchmark (under 3 minutes on 2 CPU cores)
	$(BIN)/python bench/throughput.py --quick

bench: $(STAMP)  ## full benchmark: 224 px, ResNet-50
	$(BIN)/python bench/throughput.py

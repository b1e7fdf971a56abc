# The two commands in README.md:  `make book` builds the course, `make test` runs every test.
# Both create the virtual environment and install the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
BOOK_BUILD := $(VENV)/bin/jupyter-book build . -W -n --keep-going

.PHONY: book test notebooks check-notebooks train benchmark clean help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

book: $(STAMP)  ## build the course: install, train the default run (cached in runs/), build the book into _build/html
	$(PY) -m utils.train --preset workshop
	$(BOOK_BUILD)
	@echo "The book is in _build/html/index.html"

test: $(STAMP)  ## run every test: unit tests, notebook tooling, the notebooks (nbval), the book in a browser
	$(PY) -m tools.notebooks check
	$(PY) -m pytest

notebooks: $(STAMP)  ## regenerate chapters/ (exercise twins) and the generated cells from solutions/
	$(PY) -m tools.notebooks generate

train: $(STAMP)  ## train (or load) the workshop run in runs/
	$(PY) -m utils.train --preset workshop

benchmark: $(STAMP)  ## measure training speed and time to grok; writes benchmarks/results/train_speed.json
	$(PY) benchmarks/train_speed.py

clean:  ## remove the built book and the run cache (keeps the virtual environment)
	rm -rf _build runs artifacts

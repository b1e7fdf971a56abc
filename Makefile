# The two commands in README.md:  `make book` builds the course, `make test` runs every test.
# Both create the virtual environment and install the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
BOOK_BUILD := $(VENV)/bin/jupyter-book build . -W -n --keep-going

.PHONY: book test colab-check notebooks check-notebooks train benchmark gpu-check record offline clean help
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

colab-check: $(STAMP)  ## run the setup cell and every solutions notebook on a Colab-like stack (Python 3.12, torch 2.6; 3 GB once)
	$(PY) -m utils.train --preset workshop  # trained by the course's torch; the old one must load it
	COLAB_CHECK=1 $(PY) -m pytest tests/test_colab_stack.py -v -s

notebooks: $(STAMP)  ## regenerate chapters/ (exercise twins) and the generated cells from solutions/
	$(PY) -m tools.notebooks generate

train: $(STAMP)  ## train (or load) the workshop run in runs/
	$(PY) -m utils.train --preset workshop

benchmark: $(STAMP)  ## measure training speed, time to grok and batched training; writes benchmarks/results/*.json
	$(PY) benchmarks/train_speed.py
	test ! -f benchmarks/train_many.py || $(PY) benchmarks/train_many.py

gpu-check: $(STAMP)  ## on a CUDA machine: the benchmarks, the paper's run and every chapter on the GPU (8 min); writes benchmarks/results/*_cuda.json
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

record: $(STAMP)  ## after `make test`: merge its records (chapter times, check messages) into book/records/ for the instructor guide
	$(PY) -m tools.records

offline: book  ## for a room without internet: the book, every trained run and the code in dist/grokking-course-offline.tar.gz
	mkdir -p dist
	tar czf dist/grokking-course-offline.tar.gz --exclude=./.venv --exclude=./dist --exclude=./.git \
	  --exclude=./artifacts --exclude='*.lock' .
	@echo "dist/grokking-course-offline.tar.gz: unpack it and open _build/html/index.html"

clean:  ## remove the built book and the run cache (keeps the virtual environment)
	rm -rf _build runs artifacts

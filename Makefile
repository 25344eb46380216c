# The two commands (see README):
#   make demo   set up, build the model checkpoint, generate sample inputs, run the main job
#   make test   set up and run the test suite (what .ci/run calls)
#   make bench  set up and run the benchmarks (BENCH="pages pipeline": only those; bench/__main__.py)
PY := .venv/bin/python

.PHONY: setup demo test bench
setup:
	scripts/setup.sh

demo: setup
	$(PY) -m jobs.demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(BENCH)

# The two commands a newcomer types:  `make run`  (set up + open the app)  and  `make test`  (set up + run the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup gpu run demo test lint bench bundle clean

setup:
	$(PYTHON) tools/bootstrap.py

# GPU offload: build llama.cpp's GPU backend as a module for the installed wheel (cached in the user cache dir;
# later `make setup`/`make test` keep it).  GPU=vulkan | cuda | rocm (comma-separated for several; none removes).
GPU ?= vulkan
gpu:
	$(PYTHON) tools/bootstrap.py --gpu $(GPU)

run: setup
	$(VENV)/bin/distilldesk

demo: setup
	$(VENV)/bin/distilldesk --demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_quantize.py
	$(PY) benchmarks/bench_engine.py

bundle: setup
	$(PY) packaging/build.py

clean:
	rm -rf $(VENV) build dist .pytest_cache

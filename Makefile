# trainforge: the two front-door commands are `make demo` and `make test`.
#
# The venv gets a CPU build of torch when no NVIDIA GPU is visible (torch==2.13.0: a CPU wheel is
# available locally here; on PyPI plain `torch` is a multi-GB CUDA build). Override with
#   make demo TORCH_SPEC="torch>=2.6"        # e.g. to take a CUDA build
# The project itself only requires torch>=2.6.

VENV ?= .venv
PY := $(VENV)/bin/python
TF := $(VENV)/bin/trainforge
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")
DEMO := mlruns/demo

.PHONY: demo test install lint layers bench clean

install: $(VENV)/.installed

# The editable install is setuptools' "strict" mode: a tree of links under build/__editable__.*/trainforge
# that holds core/, plugins/ and cli/ as one package, so tools that walk the package on disk (grimp, hence
# plain `lint-imports`) see trainforge.plugins and trainforge.cli. Edits show at once; a new or removed
# module needs a new install, which the folders' modification times below trigger.
$(VENV)/.installed: pyproject.toml core plugins cli $(filter-out %/__pycache__/,$(wildcard core/*/))
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]" --config-settings editable_mode=strict
	touch $@

# Train the Keras-style CNN on scikit-learn's handwritten digits, track it in MLflow, export a verified
# ONNX file, then predict the held-out test split with onnxruntime and print the accuracy.
demo: install
	mkdir -p $(DEMO)
	$(TF) train --model cnn --dataset digits --experiment demo --json > $(DEMO)/train.json
	@RUN=$$($(PY) -c "import json; print(json.load(open('$(DEMO)/train.json'))['run_id'])"); \
	$(PY) -c "import json; d=json.load(open('$(DEMO)/train.json')); print('trained run', d['run_id'], '| test accuracy (torch):', round(d['metrics']['test_accuracy'], 4), '| ONNX:', d['onnx_path'])"; \
	$(TF) data --run $$RUN --split test --output $(DEMO)/digits_test.csv && \
	$(TF) predict runs:/$$RUN --input $(DEMO)/digits_test.csv --target target --output $(DEMO)/predictions.csv && \
	echo "open the MLflow UI with: $(TF) ui   (http://127.0.0.1:5000)"

# The PostgreSQL tests (tests/test_fault.py::test_postgres_*) use $$TRAINFORGE_TEST_POSTGRES_URL; when it is
# unset and PostgreSQL is installed, .ci/postgres starts a throw-away server on loopback for them. Without
# PostgreSQL they skip with the reason; under CI (CI set) they fail instead.
# Test files run on TEST_WORKERS processes (pytest-xdist; one file stays on one worker, so its module fixtures
# are built once); most of a test's time is a child process importing torch and MLflow on one core.
TEST_WORKERS ?= 2
test: install layers
	@if [ -z "$${TRAINFORGE_TEST_POSTGRES_URL:-}" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  pg_env=$$(.ci/postgres) && eval "$$pg_env"; fi; \
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

lint: install layers
	$(VENV)/bin/ruff check core plugins cli tests benchmarks examples

# The import-linter contracts in pyproject.toml (layers, no plugin or CLI import from core, plugins on the
# floor only). Plain `lint-imports` works after `make install` (strict editable mode, above); this target
# checks a fresh copy of the working tree assembled in build/layers, new modules included.
layers: install
	rm -rf build/layers && mkdir -p build/layers
	cp -r core build/layers/trainforge && cp -r plugins build/layers/trainforge/plugins && cp -r cli build/layers/trainforge/cli
	cd build/layers && PYTHONPATH=. ../../$(VENV)/bin/lint-imports --config ../../pyproject.toml --no-cache

# Trainer overhead vs a raw loop and Lightning, ONNX Runtime vs torch eager (int8 too), start-up, predict
# throughput and memory; writes benchmarks/RESULTS.md (~6-8 min on 2 cores). TORCH_SPEC is repeated so
# that installing lightning cannot swap the installed torch build.
bench: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[bench]" "$(TORCH_SPEC)"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info

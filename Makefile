# The two commands of the README: `make run` (the main job on the embedded phantom) and `make test`.
# Both install what they need first (scripts/install.sh is a no-op when nothing changed).
PY := .venv/bin/python
RUN_ARGS ?=
# The suite on every core (at most 4 workers), a test file to a worker: module fixtures (one pipeline
# run, one KFP emulation per store) run once. `make test XDIST=` runs it in one process.
XDIST ?= -n auto --maxprocesses 4 --dist loadfile

.PHONY: install run test bench clean
install:
	@bash scripts/install.sh
	@$(PY) scripts/editor_paths.py

run: install
	@.venv/bin/ctseg run $(RUN_ARGS)

test: install
	@.venv/bin/ruff check .
	@$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Benchmarks (minutes each; results go in docs/BENCHMARKS.md): ingest speed, input pipeline, model quality.
bench: install
	$(PY) -m bench.ingest
	$(PY) -m bench.train
	$(PY) -m bench.quality

clean:
	rm -rf out .pytest_cache

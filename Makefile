# The two commands of the README: `make run` (the main job on the embedded phantom) and `make test`.
# Both install what they need first (scripts/install.sh is a no-op when nothing changed).
PY := .venv/bin/python
RUN_ARGS ?=

.PHONY: install run test bench clean
install:
	@bash scripts/install.sh
	@$(PY) scripts/editor_paths.py

run: install
	@.venv/bin/ctseg run $(RUN_ARGS)

test: install
	@.venv/bin/ruff check .
	@$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks (minutes each; results go in docs/BENCHMARKS.md): ingest speed, input pipeline, model quality.
bench: install
	$(PY) -m bench.ingest
	$(PY) -m bench.train
	$(PY) -m bench.quality

clean:
	rm -rf out .pytest_cache

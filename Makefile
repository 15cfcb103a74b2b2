# The two commands a fresh clone needs (both set up .venv from requirements.lock first):
#   make run    the semantic segmentation pipeline on built-in sample data
#   make test   the test suite
.PHONY: run run-instance test venv lock

venv:
	@./scripts/bootstrap.sh

run: venv
	.venv/bin/segpipe run --task semantic

run-instance: venv
	.venv/bin/segpipe run --task instance

test: venv
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -m "not slow" $(PARALLEL) $(PYTEST_ARGS)

# pytest-xdist: a worker per logical CPU (at most 4: a pipeline test's worker holds ~5 GB), a test file per
# worker at a time so module fixtures are built once, in conftest's order (the whole-pipeline files
# first) rather than xdist's largest-file-first. Most of a test's time is one-threaded (tracing,
# TFLite conversion, Beam in memory, process start-up): two workers on 2 cores take ~0.55x the wall
# time of one. `make test PARALLEL=` runs serially.
PARALLEL = -n logical --maxprocesses 4 --dist loadfile --no-loadscope-reorder

# Regenerate the lock file on purpose only (and say so in the commit).
lock:
	uv pip compile --python-version 3.10 --python-platform x86_64-manylinux_2_28 requirements.in -o requirements.lock

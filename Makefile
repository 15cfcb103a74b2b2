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
	.venv/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Regenerate the lock file on purpose only (and say so in the commit).
lock:
	uv pip compile --python-version 3.10 --python-platform x86_64-manylinux_2_28 requirements.in -o requirements.lock

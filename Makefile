# The README's commands. `make run` starts the embedded engine; `make test` runs every test.
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: install run test test-deps lint bench

install:  ## uv from PyPI when missing, then the locked dependencies into .venv, all compiled
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv || python3 -m pip install --quiet --break-system-packages uv
	@$(UV) sync --frozen --quiet
	@# The dependencies are compiled by uv (pyproject's compile-bytecode); mailer itself here, so
	@# that a short command starts without compiling it where Python may not write __pycache__.
	@$(UV) run --frozen python -m compileall -q mailer

run: install
	$(UV) run --frozen mailer run

test-deps:  ## Debian packages the tests use for real: Chromium, CJK fonts, PostgreSQL, Redis
	@scripts/install-test-deps

test: install test-deps
	$(UV) run --frozen pytest

lint: install
	$(UV) run --frozen ruff check mailer tests bench
	$(UV) run --frozen ruff format --check mailer tests bench
	$(UV) run --frozen mypy

bench: install  ## smtp-sink (Postfix) and wrk when missing, then the send, tick, sign-up and broadcast benchmarks
	@scripts/install-bench-deps
	$(UV) run --frozen python -m bench.send
	$(UV) run --frozen python -m bench.tick
	$(UV) run --frozen python -m bench.signup
	$(UV) run --frozen python -m bench.broadcast

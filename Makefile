# humaninput: `make run` starts the server on the embedded default, `make test` runs every test.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
REDIS_TEST_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test test-embedded test-postgres lint format clean chromium nginx

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# The test suite includes the optional crewAI adapter's tests, so it installs crewAI too.
$(VENV)/.installed-dev: requirements.txt requirements-dev.txt requirements-crewai.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt -r requirements-crewai.txt
	touch $(VENV)/.installed $@

# Embedded default: SQLite + in-memory channel layer, one daphne process.
# DJANGO_DEBUG defaults to 1 here so it runs with no key; set HUMANINPUT_API_KEY to require one.
run: $(VENV)/.installed
	DJANGO_DEBUG=$${DJANGO_DEBUG-1} $(BIN)/python manage.py migrate --noinput
	DJANGO_DEBUG=$${DJANGO_DEBUG-1} $(BIN)/daphne -b $(HOST) -p $(PORT) humaninput_project.asgi:application

# Several daphne processes (the Procfile's web, through honcho) on PostgreSQL + Redis, on ports
# SERVE_PORT, SERVE_PORT+1, ...; creates the database if it is missing. DATABASE_URL/REDIS_URL
# override the defaults below. DJANGO_DEBUG defaults to 1 as in `run` (see docs/deployment.md).
SERVE_PROCESSES ?= 2
SERVE_PORT ?= 8001
.PHONY: serve
serve: $(VENV)/.installed-serve
	export DATABASE_URL="$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/humaninput}" \
		REDIS_URL="$${REDIS_URL:-redis://127.0.0.1:6379/1}" DJANGO_DEBUG="$${DJANGO_DEBUG-1}" && \
	$(BIN)/python deploy/create_database.py && \
	$(BIN)/python manage.py migrate --noinput && \
	PATH="$(abspath $(BIN)):$$PATH" HOST=$(HOST) PYTHONUNBUFFERED=1 \
		exec $(BIN)/honcho start -f Procfile -c web=$(SERVE_PROCESSES) -p $(SERVE_PORT)

$(VENV)/.installed-serve: requirements.txt requirements-serve.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-serve.txt
	touch $(VENV)/.installed $@

# Every test, on the embedded default and on PostgreSQL + Redis.
test: lint test-embedded test-postgres

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`).
chromium:
	@[ -x "$${CHROMIUM_PATH:-/usr/bin/chromium}" ] || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test-embedded: $(VENV)/.installed-dev chromium
	env -u DATABASE_URL -u REDIS_URL $(BIN)/python -X dev -m pytest -m "not services" $(PYTEST_ARGS)

# The deployment test runs deploy/nginx.conf in Debian's nginx, with a throwaway openssl certificate.
nginx:
	@(command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]) && command -v openssl >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light openssl)

test-postgres: $(VENV)/.installed-dev chromium nginx
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) $(BIN)/python -X dev -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run --verbosity 0

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every package of the test venv (transitive ones too) against known vulnerabilities:
# fails on a vulnerable pin; says NOT AUDITED when no vulnerability source answers.
AUDIT_VENV ?= .venv-audit
$(AUDIT_VENV)/.installed: requirements-audit.txt
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install --quiet -r requirements-audit.txt
	touch $@

.PHONY: audit
audit: $(VENV)/.installed-dev $(AUDIT_VENV)/.installed
	$(BIN)/python .ci/audit_dependencies.py $(AUDIT_VENV)/bin/pip-audit $(BIN)/python

clean:
	rm -rf $(VENV) $(AUDIT_VENV) db.sqlite3* test-db-*.sqlite3*

# --- benchmarks
.PHONY: bench bench-smoke soak soak-ci

# One daphne process, client load from other processes; embedded, then PostgreSQL + Redis
# (a database of its own on 127.0.0.1:5432, Redis db 14). Writes bench/results/latest.{json,md}.
# ARGS=--full runs longer; ARGS="--setup embedded --only latency" picks parts.
bench: $(VENV)/.installed
	$(BIN)/python -m bench $(ARGS)

# Every scenario with tiny counts, in seconds: fails only if an event is lost, duplicated or
# out of order, or a scenario cannot run (no speed is asserted). Redis db 15; cleans up after itself.
bench-smoke: $(VENV)/.installed
	$(BIN)/python -m bench --smoke $(ARGS)

# Soak (docs/soak.md): 500 WS + 200 SSE + 100 long-poll clients over 100 executions, 50 events/s,
# random drops and resumes, two daphne processes on PostgreSQL + Redis (db 13); 15 minutes.
# Fails on any lost, duplicated or out-of-order event, a connection the server ended, a server
# traceback or a subscriber left behind; memory, latency and leaks are reported, not asserted.
# Writes bench/results/soak-postgres.json. ARGS="--setup embedded" for the embedded setup.
soak: $(VENV)/.installed
	$(BIN)/python -m bench.soak $(ARGS)

# The same counts for 60 s on each setup (about 3.5 minutes in all; Redis db 12).
soak-ci: $(VENV)/.installed
	$(BIN)/python -m bench.soak --duration 60 --setup embedded --redis-db 12 \
		--json bench/results/soak-ci-embedded.json $(ARGS)
	$(BIN)/python -m bench.soak --duration 60 --setup postgres --redis-db 12 \
		--json bench/results/soak-ci-postgres.json $(ARGS)

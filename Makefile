# rpcworker developer commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONF ?= etc/rpcworker/rpcworker.conf
PYTEST_ARGS ?=
BENCH_ARGS ?=
GUARD_ARGS ?=

.PHONY: venv install run test check lint format typecheck unit functional functional-4x test-rabbit4 test-cluster test-systemd sample docs bench bench-guard clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python

install: venv
	$(BIN)/pip install --quiet -e '.[test]' -e tests/plugin -e benchmarks/plugin \
		-e examples/rpcworker-inventory -e examples/rpcworker-handler-example \
		-e examples/rpcworker-nova-events

## start the worker in the foreground on the shipped config (Ctrl-C stops it)
run: install
	$(BIN)/rpcworker --config-file $(CONF)

LINTED := rpcworker tests benchmarks examples

## ruff's rules (SLF001 included) and its formatting, checked
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

## format the code as `make lint` wants it
format: install
	$(BIN)/ruff format $(LINTED)

typecheck: install
	$(BIN)/mypy

## venv + install + ruff + mypy + every test suite (unit, examples, bench-guard,
## functional, functional-4.x, rabbit4-strict, cluster, systemd),
## one after the other, then one line per suite with its result and time
test: lint typecheck
	$(BIN)/python -m tests.suites $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -q tests/unit

## the edit loop: lint, types and the unit tests (no broker; about a minute)
check: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

functional: install
	$(BIN)/pytest -q -ra tests/functional

## tests/functional again, against RabbitMQ 4.x: Debian sid's rabbitmq-server in
## systemd-nspawn on 127.0.0.1:5673 (tests/rabbit4node.py; needs root, debootstrap and
## systemd-container); the host's broker on 5672 is not touched
functional-4x: install
	$(BIN)/python -m tests.suites --suite functional-4.x $(PYTEST_ARGS)

## tests/rabbit4 on a strict RabbitMQ 4.x node (deprecated features denied; 5674)
test-rabbit4: install
	$(BIN)/pytest -q -ra $(PYTEST_ARGS) tests/rabbit4

## the tests on a throw-away 3-node RabbitMQ cluster (tests/cluster; needs root)
test-cluster: install
	$(BIN)/pytest -q -ra $(PYTEST_ARGS) tests/cluster

## the units under a real systemd: a cached Debian root booted with systemd-nspawn
## (tests/systemd; needs root, debootstrap and systemd-container)
test-systemd: install
	$(BIN)/pytest -q -ra $(PYTEST_ARGS) tests/systemd

## regenerate etc/rpcworker/rpcworker.conf.sample
sample: install
	$(BIN)/oslo-config-generator --config-file etc/oslo-config-generator/rpcworker.conf

## the documentation (doc/source): HTML in doc/build/html, the man pages rpcworker(8) and
## rpcworker-client(1) in doc/build/man; any Sphinx warning is an error
docs: install
	$(BIN)/pip install --quiet -e '.[docs]'
	$(BIN)/sphinx-build -W --keep-going -q -b html doc/source doc/build/html
	$(BIN)/sphinx-build -W --keep-going -q -b man doc/source doc/build/man

## the benchmark harness against the local RabbitMQ (issue 4): prints a table and writes
## benchmarks/RESULTS.md; `BENCH_ARGS='--rounds 5 --no-broker-restart'` passes options
bench: venv
	$(BIN)/pip install --quiet -e '.[test,bench]' -e tests/plugin -e benchmarks/plugin
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

## the drain regression guard alone (also the bench-guard suite of `make test`): rpcworker's
## drain rate ÷ a bare py-amqp consumer's, median of alternated rounds, against the FLOOR of
## benchmarks/guard.py (about a minute); `GUARD_ARGS='--rounds 9 -n 20000'` passes options
bench-guard: install
	$(BIN)/python -m benchmarks.guard $(GUARD_ARGS)

clean:
	rm -rf $(VENV) build dist doc/build doc/source/_static/rpcworker.conf.sample *.egg-info .mypy_cache .ruff_cache .pytest_cache

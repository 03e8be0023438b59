# The two commands a newcomer needs: `make demo` and `make test`.
PY := .venv/bin/python
KEEP ?= 0

.PHONY: demo test test-quick bench bootstrap clean fuzz

bootstrap:
	@bash scripts/bootstrap

demo: bootstrap
	@$(PY) -m gateway.lab.demo $(if $(filter 1,$(KEEP)),--keep,)

test: bootstrap
	@$(PY) -m pytest -q

test-quick: bootstrap
	@$(PY) -m pytest -q -m "not netns"

# Long fuzzing run (not in CI): each atheris harness for FUZZ_SECONDS, then the hypothesis properties at length.
FUZZ_SECONDS ?= 600
fuzz: bootstrap
	@$(PY) -m fuzz all --seconds $(FUZZ_SECONDS)
	@EGRESSGW_FUZZ=long $(PY) -m pytest -q tests/fuzz -k "not harness"

bench: bootstrap
	@bash bench/run

clean:
	rm -rf .venv build *.egg-info .pytest_cache

# The two commands a newcomer needs: `make demo` and `make test`.
PY := .venv/bin/python
KEEP ?= 0

.PHONY: demo test test-quick bench bootstrap clean

bootstrap:
	@bash scripts/bootstrap

demo: bootstrap
	@$(PY) -m gateway.lab.demo $(if $(filter 1,$(KEEP)),--keep,)

test: bootstrap
	@$(PY) -m pytest -q

test-quick: bootstrap
	@$(PY) -m pytest -q -m "not netns"

bench: bootstrap
	@bash bench/run

clean:
	rm -rf .venv build *.egg-info .pytest_cache

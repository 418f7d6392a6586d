# Everything the project needs is installed by this file into .venv: a fresh Linux
# machine with only python3 (no root, no system packages) runs `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint typecheck test demo demo-m2 demo-discharge bench bench-m2 bench-discharge clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# both cores: the suite's servers each take a free port, so the tests run in any order, in parallel
test: lint typecheck
	$(PY) -m pytest -q -n 2

demo: demo-m2 demo-discharge demo-passagepoint

demo-m2: $(STAMP)
	$(PY) demo/m2_demo.py

bench: bench-m2 bench-discharge bench-lcpp

bench-m2: $(STAMP)
	$(PY) bench/bench_m2_loader.py
	$(PY) bench/bench_m2_api.py
	$(PY) bench/bench_m2_lambda.py

demo-discharge: $(STAMP)
	$(PY) demo/discharge_demo.py

bench-discharge: $(STAMP)
	$(PY) bench/bench_discharge.py

demo-passagepoint: $(STAMP)
	$(PY) demo/passagepoint_demo.py

bench-lcpp: $(STAMP)
	$(PY) bench/bench_lcpp.py

# the AWS Lambda's deployment zip, the API alone: build/lambda/m2-code-store-lambda.zip (see
# m2_code_store/lambda_package.py); pip downloads the dependencies for the Lambda's platform
.PHONY: lambda-package
lambda-package: $(STAMP)
	$(PY) -m m2_code_store.lambda_package

clean:
	rm -rf $(VENV) .m2-data .pytest_cache

# The two quick-start commands: `make demo` and `make test`. Each creates the
# virtual environment on first use and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-slow clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[experiments,serving,dev]'
	touch $(STAMP)

# The quick reproduction of every experiment; ends by printing the index report's path.
demo: $(STAMP)
	$(BIN)/keras-ntk reproduce --preset quick --out results

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not debian_data" -q

# pytest exits 5 when no test carries the marker: nothing slow to run is no failure.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not debian_data" -q || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) build *.egg-info

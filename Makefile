# Two commands a user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to releases known to work together on CPU and GPU.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= runs/demo

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_PINS)
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Lint and format check first (seconds), then the suite.
test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/crossregion demo --output $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs

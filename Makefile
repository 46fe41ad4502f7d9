# Thin wrappers around the project's commands. Everything runs from the venv in .venv/,
# which `setup` creates on first use (pinned versions in requirements.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RECIPE ?= recipes/pangu_pro_moe/pretrain_tiny.yaml
SET    ?=
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup train test clean bench-ops

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

setup: $(VENV)/.installed
	@$(PY) -m ops.attention.build >/dev/null || echo "warning: FastAttention CPU kernel not built; attention falls back to the reference"

train: setup
	$(PY) -m recipes.run $(RECIPE) $(if $(strip $(SET)),--set "$(SET)") $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

bench-ops: setup  ## FastAttention vs reference, 1K-16K tokens: time and peak memory ratios
	$(PY) -m ops.attention.bench $(ARGS)

clean:
	rm -rf runs build .cache .pytest_cache
	find . -name __pycache__ -prune -not -path './$(VENV)/*' -exec rm -rf {} +

.PHONY: simulate search launch
simulate: setup  ## simulate strategy files: make simulate STRATEGY=pangu_pro_moe_4k_optimised
	$(PY) -m parallel_strategies simulate $(STRATEGY)
search: setup  ## rank strategies: make search MODEL=pangu_pro_moe DEVICES=4096 [HW=ascend_910b BATCH_TOKENS=4194304]
	$(PY) -m parallel_strategies search --model $(MODEL) --devices $(DEVICES) $(if $(HW),--hardware $(HW)) $(if $(BATCH_TOKENS),--batch-tokens $(BATCH_TOKENS))
launch: setup  ## msrun a recipe: make launch RECIPE=... STRATEGY=... [ARGS="--hostfile hosts --dry-run"]
	$(PY) -m parallel_strategies launch --recipe $(RECIPE) --strategy $(STRATEGY) $(ARGS)

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
	@$(PY) -m ops._build >/dev/null || echo "warning: some CPU op kernels (ops/*/csrc) not built; those ops fall back to their references"

train: setup
	$(PY) -m recipes.run $(RECIPE) $(if $(strip $(SET)),--set "$(SET)") $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

bench-ops: setup  ## FastAttention vs reference (1K-16K tokens, time + memory), then every other op's fast path vs reference
	$(PY) -m ops.attention.bench $(ARGS) && $(PY) -m ops.bench_ops

clean:
	rm -rf runs build .cache .pytest_cache
	find . -name __pycache__ -prune -not -path './$(VENV)/*' -exec rm -rf {} +

.PHONY: simulate search launch
simulate: setup  ## simulate strategy files: make simulate STRATEGY=pangu_pro_moe_4k_optimised
	$(PY) -m parallel_strategies simulate $(STRATEGY)
search: setup  ## rank strategies: make search MODEL=pangu_pro_moe|CONFIG=config.json DEVICES=4096 [HW=ascend_910b BATCH_TOKENS=4194304]
	$(PY) -m parallel_strategies search $(if $(CONFIG),--config-json $(CONFIG),--model $(MODEL)) --devices $(DEVICES) $(if $(HW),--hardware $(HW)) $(if $(BATCH_TOKENS),--batch-tokens $(BATCH_TOKENS))
launch: setup  ## msrun a recipe: make launch RECIPE=... STRATEGY=... [ARGS="--hostfile hosts --dry-run"]
	$(PY) -m parallel_strategies launch --recipe $(RECIPE) --strategy $(STRATEGY) $(ARGS)

.PHONY: export import average
export: setup  ## serving layout (docs/export.md): make export RUN=runs/<name> [OUT=exports/<name>] [ARGS="--dtype bf16 --mindir", "--quantize w8a8|int8-weight"]
	$(PY) -m recipes.export $(RUN) --out $(or $(OUT),exports/$(notdir $(RUN))) $(ARGS)
import: setup  ## serving directory -> run directory (docs/export.md): make import DIR=<hf dir> OUT=runs/<name>
	$(PY) -m recipes.import_hf $(DIR) --out $(OUT) $(ARGS)
average: setup  ## weight averaging: make average RUN=runs/<name> [LAST=3 METHOD=ema ARGS="--decay 0.9"] [OUT=runs/<name>-avg]; grouped: ARGS="--base C --group 0.5:C1,C2"
	$(PY) -m recipes.average --out $(or $(OUT),$(RUN)-avg) $(if $(RUN),--run $(RUN) --last $(or $(LAST),3)) $(if $(METHOD),--method $(METHOD)) $(ARGS)

.PHONY: pipeline eval generate score
pipeline: setup  ## staged recipes end to end: make pipeline MODEL=pangu_pro_moe|pangu_ultra_moe|mindvl [ARGS="--limit 64"]
	$(PY) -m recipes.pipeline recipes/$(MODEL)/pipeline.yaml $(ARGS)
eval: setup  ## greedy exact match on held-out prompts: make eval RUN=runs/pro_sft [ARGS="--limit 100"]
	$(PY) -m recipes.evaluate $(RUN) $(ARGS)
score: setup  ## logits for token ids (docs/export.md): make score RUN=runs/<name>|exports/<name> TOKENS=1,2,3 [OUT=logits.npy] [ARGS="--pixel-values X.npy --grid-thw 1,4,4"]
	$(PY) -m recipes.score $(RUN) --tokens $(TOKENS) --out $(or $(OUT),logits.npy) $(ARGS)

generate: setup  ## make generate RUN=runs/pro_sft PROMPT="copy: a b c ->" [ARGS="--temperature 0.8 --top-p 0.9", "--speculative mtp -k 2", "--draft runs/small"]
	$(PY) -m recipes.generate $(RUN) --prompt "$(PROMPT)" $(ARGS)

.PHONY: eval-long
eval-long: setup  ## long-context recall, full / truncate / XL3M (docs/inference.md): make eval-long RUN=runs/pro_lookup_dense [ARGS="--multiples 4,16,64 --json"]
	$(PY) -m recipes.eval_long $(RUN) $(ARGS)

.PHONY: bench-generate
bench-generate: setup  ## decode tok/s with/without MTP and draft-model speculative decoding (docs/benchmarks.md): make bench-generate [ARGS="--json --mtp-run runs/X --target runs/Y --draft runs/Z"]
	$(PY) -m recipes.tools.bench_generate $(ARGS)

.PHONY: prepare-data
prepare-data: setup  ## token shards (docs/data.md): make prepare-data FORMAT=megatron|mindrecord [OUT=data/FORMAT] [INPUT=corpus.jsonl] [ARGS="--tokenizer-model tok.model"]
	$(PY) -m recipes.data.prepare --format $(or $(FORMAT),megatron) --out $(or $(OUT),data/$(or $(FORMAT),megatron)) $(if $(INPUT),--input $(INPUT)) $(ARGS)

.PHONY: chaos
chaos: setup  ## SIGKILL the tiny recipe at random points, resume, compare bitwise: make chaos [ARGS="--kills 10 --seed 0"]
	$(PY) -m recipes.tools.chaos $(if $(strip $(ARGS)),$(ARGS),--kills 10 --seed 0)

.PHONY: bench
bench: setup  ## train-step time, tokens/s, MFU on CPU, MoE vs dense, data throughput -> docs/benchmarks.md: make bench [ARGS="--label x --steps 10"]
	$(PY) -m recipes.tools.bench $(ARGS)

.PHONY: serve-plan serve-sim scale-plan
SLO ?= ttft=3s,tpot=50ms
serve-plan: setup  ## P/D serving plan (docs/serving.md): make serve-plan MODEL=pangu_ultra_moe HW=ascend_910c_cm384 [SLO="ttft=3s,tpot=15ms" CONFIG=file.json WORKLOAD=cm_infer_4k ARGS="--dtype int8 --npus 384 --json"]
	$(PY) -m parallel_strategies serve-plan $(if $(CONFIG),--config-json $(CONFIG),--model $(MODEL)) --hardware $(HW) --slo "$(SLO)" $(if $(WORKLOAD),--workload $(WORKLOAD)) $(ARGS)
serve-sim: setup  ## trace simulation, mixed pool vs P/D-Serve: make serve-sim MODEL=pangu_pro_moe HW=atlas_800i_a2 [ARGS="--arrival tidal --json"]
	$(PY) -m parallel_strategies serve-sim $(if $(CONFIG),--config-json $(CONFIG),--model $(MODEL)) --hardware $(HW) $(ARGS)
scale-plan: setup  ## elastic EP scaling (ElasticMoE): make scale-plan MODEL=pangu_pro_moe HW=atlas_800i_a2 DEVICES=8 TO=16 [ARGS="--dtype int8 --json"]
	$(PY) -m parallel_strategies scale-plan $(if $(CONFIG),--config-json $(CONFIG),--model $(MODEL)) --hardware $(HW) --devices $(DEVICES) --to $(TO) $(ARGS)

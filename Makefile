# alignlab — `make help` lists the targets.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: help install test test-slow study study-smoke bench bench-gpu bench-peers world lint clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

install: ## install alignlab (editable) with torch pinned by constraints.txt (CPU wheel here, CUDA on GPU machines)
	$(PIP) install -c constraints.txt -e ".[dev,sweep]"
	$(PYTHON) -c "import alignlab, open_clip, torch; print('alignlab ready: torch', torch.__version__, '| cuda', torch.cuda.is_available())"

test: ## the default test suite (< 15 min on 2 CPU cores)
	$(PYTHON) -m pytest -q

test-slow: ## the long tests: learning runs (marked slow)
	$(PYTHON) -m pytest -q -m slow

study: ## the miniature study (docs/results.md): 4 experiments x 3 seeds into study/, ~7.5-10 h on 2 shared CPU cores; resumable
	$(PYTHON) experiments/study.py all

study-smoke: ## every study experiment with a tiny budget (tests/e2e/test_study.py, slow set), ~6 min
	$(PYTHON) -m pytest -q -m slow tests/e2e/test_study.py

bench: ## speed and memory benchmarks (ratios measured side by side)
	$(PYTHON) -m alignlab.benchmarks.speed
	$(PYTHON) -m alignlab.benchmarks.asyndm
	$(PYTHON) -m alignlab.benchmarks.rewards

bench-gpu: ## on a CUDA machine: SD 1.5 / 2.1-shaped UNets at 512 px, fp16 / bf16, checkpointing, torch.compile (docs/benchmarks.md)
	$(PYTHON) -m alignlab.benchmarks.speed --models sd15,sd21 --latent 64 --device cuda --dtype float16 --skip-methods --repeats 5 --out bench/gpu_float16.json
	$(PYTHON) -m alignlab.benchmarks.speed --models sd15,sd21 --latent 64 --device cuda --dtype bfloat16 --skip-methods --repeats 5 --out bench/gpu_bfloat16.json
	$(PYTHON) -m alignlab.benchmarks.sd --models sd15 --out bench/sd15.json
	$(PYTHON) -m alignlab.benchmarks.sd --models sd21 --out bench/sd21.json

bench-peers: ## our samplers vs the official ddpo-pytorch, AsynDM and D-Fusion code cloned under PEERS=dir (experiments/peers)
	$(PYTHON) experiments/peers/run_ddpo.py --checkout $(PEERS)/ddpo-pytorch
	$(PYTHON) experiments/peers/run_asyndm.py --checkout $(PEERS)/AsynDM
	$(PYTHON) experiments/peers/run_asyndm.py --checkout $(PEERS)/AsynDM --static
	$(PYTHON) experiments/peers/run_dfusion.py --checkout $(PEERS)/D-Fusion

world: ## rebuild the shapes world (CLIP, text encoder, text-to-image model, report) into world_build/ (--install: into the package)
	$(PYTHON) -m alignlab.world.build --out world_build

lint: ## static checks
	$(PYTHON) -m ruff check alignlab tests experiments

clean: ## remove run outputs
	rm -rf outputs multirun study-smoke .pytest_cache  # study/ holds the study's runs: remove it by hand; world_build/ holds resumable world checkpoints: remove it by hand

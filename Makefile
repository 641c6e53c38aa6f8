# The two commands of the README: `make demo` (main job on synthetic data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := data/demo
DEMO_TILES ?= 12
DEMO_TILE_PX ?= 160
DEMO_EPOCHS ?= 8

.PHONY: demo test lint clean-demo

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(DEMO)/raw/.complete: | $(VENV)/.installed
	$(PY) -m scripts.make_synthetic --out $(DEMO)/raw --n_tiles $(DEMO_TILES) --seed 0 --tile_px $(DEMO_TILE_PX)
	touch $@

demo: $(VENV)/.installed $(DEMO)/raw/.complete
	$(PY) -m scripts.prepare --raw_dir $(DEMO)/raw --processed_dir $(DEMO)/processed --workers 2
	rm -rf $(DEMO)/checkpoints/UNet/demo $(DEMO)/logs/UNet/demo $(DEMO)/predictions/UNet
	$(PY) -m scripts.train --model_type UNet --raw_dir $(DEMO)/raw --processed_dir $(DEMO)/processed \
		--max_epochs $(DEMO_EPOCHS) --checkpoint_dir $(DEMO)/checkpoints --log_dir $(DEMO)/logs \
		--wandb_run_name demo
	$(PY) -m scripts.evaluate --model_path $(DEMO)/checkpoints/UNet/demo/last.ckpt \
		--processed_dir $(DEMO)/processed --results_dir $(DEMO)/predictions/UNet

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers, one test file each at a time (module fixtures stay in one process), torch on one
# thread per process: the suite's tiny trainings run side by side instead of spinning OpenMP
# threads against each other.
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile

clean-demo:
	rm -rf $(DEMO)

# Planted-bug testing of the core modules (Cosmic Ray, about half an hour): not part of `make test`.
# MUTATION_ARGS="scores split" runs some modules; "--report" prints the last run again.
.PHONY: mutation
mutation: $(VENV)/.installed
	$(PY) tests/mutation/run.py $(MUTATION_ARGS)

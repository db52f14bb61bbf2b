# Quick start: `make demo` and `make test` create .venv/ on first use (pinned versions).
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DS_STAMP := $(VENV)/.installed-deepspeed
export FORCE_QWENVL_VIDEO_READER := decord
export MUJOCO_GL := egl
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-slow bench clean

venv: $(STAMP)

# Plain pip on purpose: it takes torch/torchvision from the local wheel copy (uv/poetry would download).
$(STAMP): requirements.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The optional DeepSpeed extra (sharded training); the test suite launches it on CPU.
$(DS_STAMP): $(STAMP) requirements-deepspeed.txt
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements-deepspeed.txt
	touch $(DS_STAMP)

demo: $(STAMP)
	$(VPY) demo/run.py --out runs/demo

test: $(DS_STAMP)
	$(VPY) -m pytest -q

test-slow: $(DS_STAMP)
	$(VPY) -m pytest -q -m slow

bench: $(STAMP)
	for script in bench/*.py; do $(VPY) $$script || exit 1; done

clean:
	rm -rf runs build *.egg-info

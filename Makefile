# cbam_mmdet: the README's commands.  `make demo` and `make test` build .venv/ first when needed.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
REQ := requirements/env.txt
# Written only after tools/check_env.py has proved the stack works; its prerequisites decide when
# `make env` has to run again, so a second run with nothing changed does nothing.
ENV_STAMP := $(VENV)/.env-ready
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: env test lint demo compare clean-env

env: $(ENV_STAMP)

$(ENV_STAMP): $(REQ) setup.py tools/check_env.py
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(ENV_STAMP)
	$(PIP) install -q -c $(REQ) setuptools wheel ninja
	$(PIP) install -q -c $(REQ) torch torchvision opencv-python
	@# mmcv has no wheel for this torch: build it against the torch above (no build isolation) with
	@# its C++ ops; with cv2 importable at build time it adds no second OpenCV package.
	@# pip keeps the built wheel in its cache, so later environments skip the build.
	MMCV_WITH_OPS=1 MAX_JOBS=$(MAX_JOBS) $(PIP) install -c $(REQ) --no-build-isolation mmcv
	$(PIP) install -q -r $(REQ)
	$(PIP) install -q -c $(REQ) --no-build-isolation --no-deps -e .
	$(VPY) tools/check_env.py
	@touch $(ENV_STAMP)

test: $(ENV_STAMP)
	$(VPY) -m pytest tests

# Style and imports as mmdet checks them (settings in setup.cfg); run by CI before the tests.
lint: $(ENV_STAMP)
	$(VPY) -m flake8 .
	$(VPY) -m isort --check-only --diff .

# The main job: baseline vs CBAM Faster R-CNN trained and evaluated on the synthetic data.
demo: $(ENV_STAMP)
	$(VPY) tools/run_demo.py

# A benchmark, not a test: baseline vs CBAM Faster R-CNN R18-FPN, 3 seeds each, trained and
# evaluated on the synthetic data at demo scale: 6 demo-sized runs, about 30 min on 2 idle cores
# (docs/compare.md). `make compare COMPARE_ARGS=--resume` continues an interrupted one.
COMPARE_SWEEP ?= configs/demo/sweeps/cbam_vs_baseline.yaml
COMPARE_ARGS ?=
compare: $(ENV_STAMP)
	@test -f data/synthetic/coco/annotations/instances_val.json || \
		$(VPY) tools/make_synthetic_dataset.py data/synthetic
	$(VPY) tools/analysis/compare.py $(COMPARE_SWEEP) $(COMPARE_ARGS)

clean-env:
	rm -rf $(VENV)

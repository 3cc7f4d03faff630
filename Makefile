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

.PHONY: env test demo clean-env

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

# The main job: baseline vs CBAM Faster R-CNN trained and evaluated on the synthetic data.
demo: $(ENV_STAMP)
	$(VPY) tools/run_demo.py

clean-env:
	rm -rf $(VENV)

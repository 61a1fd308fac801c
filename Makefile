# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BUNDLE := artifacts/demo_bundle
REPOSITORY := model_repository
MODEL := $(REPOSITORY)/multimodal_model/1/model.pt
PYTEST_ARGS ?=
# Optional extra index for the CPU-only torch build, e.g. https://download.pytorch.org/whl/cpu.
# Without it pip takes torch 2.13.0 from PyPI: the CUDA build (several GB, also runs on CPU).
TORCH_INDEX ?=

.PHONY: setup bundle build demo serve bench lint test test-unit test-integration clean admin-key

setup: $(STAMP)

# One resolve of exact pins (numpy<2 for the Triton stubs), then the project itself.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -r requirements.lock $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The SDK installs alone: a clean virtual environment with the [client] extra (pinned by the lock)
# gets no torch, pandas, pytest or locust, and encodes records.
.PHONY: check-extras
check-extras: $(STAMP)
	rm -rf .venv-client && $(PYTHON) -m venv .venv-client
	.venv-client/bin/python -m pip install -q ".[client]" -c requirements.lock
	.venv-client/bin/python -c 'import importlib.metadata as m, sys; \
	    heavy = sorted({d.metadata["Name"].lower() for d in m.distributions()} & {"torch", "pandas", "pytest", "locust"}); \
	    heavy and sys.exit(f"the [client] extra pulled in {heavy}"); \
	    from tce_client.schema import EnsembleSchema, TaskInfo; \
	    s = EnsembleSchema(("t",), ("a",), ("c",), ("a", "c"), (TaskInfo("x", "binary", ("n", "y")),), \
	                       {"numeric": "numeric_features", "categorical": "categorical_features"}); \
	    s.encode([{"t": "hi", "a": 1.5, "c": "k"}]); print("pip install .[client]: no torch, pandas, pytest or locust")'
	rm -rf .venv-client

# The lock resolves from public PyPI alone, ignoring any local wheel folder or extra index.
.PHONY: check-lock
check-lock: $(STAMP)
	env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT -u PIP_NO_INDEX \
	    PIP_CONFIG_FILE=/dev/null $(BIN)/python -m pip install --dry-run --ignore-installed --quiet \
	    --index-url https://pypi.org/simple -r requirements.lock
	@echo "requirements.lock resolves from PyPI alone"

bundle: $(BUNDLE)/manifest.json
$(BUNDLE)/manifest.json: $(STAMP) tce/trainer/modeling.py tce/trainer/training.py tce/lib/demo_data.py \
                         tce/lib/thresholds.py python_backends/tce_backends/decisions.py \
                         python_backends/tce_backends/score_metrics.py
	$(BIN)/tce demo-bundle --out $(BUNDLE)

# BUILD_OPTIONS: more `tce build` options, e.g. BUILD_OPTIONS=--preprocessor-batching for a
# repository served behind the gateway alone (docker compose, Kubernetes).
BUILD_OPTIONS ?=
build: $(MODEL)
# Rebuilt when any file of the bundle changes (`tce calibrate fit` rewrites its calibration), and
# when the builder changes too: a repository of an earlier layout must not linger.
BUNDLE_FILES = $(shell find $(BUNDLE) -type f 2>/dev/null)
$(MODEL): $(BUNDLE)/manifest.json $(BUNDLE_FILES) tce/repository/builder.py tce/repository/host_sizing.py \
          tce/models/length_trim.py \
          $(wildcard python_backends/tce_backends/*.py)
	$(BIN)/tce build $(BUNDLE) --out $(REPOSITORY) $(BUILD_OPTIONS)

# Ports: make serve HTTP_PORT=9000 GRPC_PORT=9001 METRICS_PORT=9002 (make demo picks free ones
# unless they are given).
HTTP_PORT ?=
GRPC_PORT ?=
METRICS_PORT ?=
PORT_OPTIONS = $(if $(HTTP_PORT),--http-port $(HTTP_PORT)) $(if $(GRPC_PORT),--grpc-port $(GRPC_PORT)) \
               $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))

demo: build
	$(BIN)/tce demo --repository $(REPOSITORY) $(PORT_OPTIONS)

serve: build
	$(BIN)/tce serve --repository $(REPOSITORY) $(PORT_OPTIONS)

# Served ensemble vs model.pt in process vs fixed padding, in one run (docs/performance.md).
bench: build
	$(BIN)/tce benchmark --repository $(REPOSITORY) --out artifacts/benchmark.json
	$(BIN)/tce benchmark --instant-model --repository $(REPOSITORY) --out artifacts/benchmark_instant.json
	$(BIN)/tce benchmark --instant-model --preprocessor-batching --repository $(REPOSITORY) \
	    --out artifacts/benchmark_instant_merged.json
	$(BIN)/python -m benchmarks.gateway --repository $(REPOSITORY)

# The model step on CUDA: served == reference (HTTP and gRPC), CUDA placement confirmed, then the
# benchmark; refuses in one line without a CUDA device (docs/performance.md, "GPU check").
.PHONY: gpu-check
gpu-check: build
	$(BIN)/python -m benchmarks.gpu_check --repository $(REPOSITORY) --bundle $(BUNDLE)

# Lint first: pyflakes, pycodestyle, import order, bugbear and a complexity cap ([tool.ruff]).
lint: $(STAMP)
	$(BIN)/ruff check .

test: build lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

# Hostile input and fault drills only (all of them also run in `make test`); see docs/security.md.
FAULT_TESTS := tests/integration/test_hostile_input.py tests/integration/test_attack_table.py \
	tests/integration/test_admin_security.py tests/integration/test_gateway.py tests/integration/test_overload.py \
	tests/e2e/test_serve_lifecycle.py tests/e2e/test_container_entrypoint.py tests/e2e/test_fault_drills.py
.PHONY: test-faults
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q $(FAULT_TESTS)

clean:
	rm -rf artifacts && git clean -fdXq -- $(REPOSITORY)

# Load test against the embedded server: make loadtest USERS=8 SPAWN_RATE=4 DURATION=2m
USERS ?= 4
SPAWN_RATE ?= 4
DURATION ?= 60s
.PHONY: loadtest
loadtest: build
	$(BIN)/tce loadtest --repository $(REPOSITORY) --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION)

# The admin key docker compose hands to Triton (model control, shared memory, logging, trace).
# secrets/ is private to you; the file stays readable for the container's unprivileged user.
admin-key: secrets/admin-key
secrets/admin-key:
	mkdir -p -m 700 secrets
	umask 022 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@
	@echo "admin key written to $@; docker compose reads it, tce calibrate publish takes --admin-key-file $@"

# loom: the two quick-start commands.
#   make plan   installs the missing Debian packages `loom` needs (when root), configures, builds `loom` alone, prints a plan
#   make test   installs the rest (tests, benchmarks, fuzz tree, notebooks, Open MPI for the CPU executor),
#               builds everything (the executor modules `loom execute` loads included), then every test (ctest)
# Variables: MODEL, CLUSTER, GPUS, BATCH (and SEQ, default the model's) for `make plan`; BUILD (build dir); JOBS.

BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
MODEL ?= gpt3-175b
CLUSTER ?= dgx-a100
GPUS ?= 1024
BATCH ?= 1536
SEQ ?=

# The Debian packages the `loom` binary builds with (all `make plan` installs; Boost.Graph is
# header-only, in libboost-dev) ...
PLAN_DEBS := cmake ninja-build g++ nlohmann-json3-dev libcli11-dev libfmt-dev libtomlplusplus-dev libboost-dev
# ... and those only the tests, benchmarks, fuzz tree, notebooks and the executors need (`make
# test` adds them). Open MPI is the CPU executor's (libloom_cpu.so, which `loom execute` loads):
# `loom` links none, and libopenmpi-dev alone is half of the packages (BENCHMARKS.md).
TEST_DEBS := clang libclang-rt-14-dev catch2 libbenchmark-dev libopenmpi-dev openmpi-bin \
             python3 python3-matplotlib python3-nbconvert python3-ipykernel jupyter-nbconvert
DEBS := $(PLAN_DEBS) $(TEST_DEBS)

FUZZ_BUILD ?= build-fuzz
NVCC := $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
# LOOM_UNITY_BUILD: loom's libraries compile in batches of 8 files (about half the CPU time of
# `make plan`'s build, BENCHMARKS.md); the same in `make test`, so it rebuilds nothing `make plan` built.
CMAKE_FLAGS := -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOOM_UNITY_BUILD=ON $(if $(NVCC),-DCMAKE_CUDA_COMPILER=$(NVCC)) \
               -DLOOM_FUZZ_BIN=$(abspath $(FUZZ_BUILD))/tests/fuzz/loom_fuzz $(EXTRA_CMAKE_FLAGS)
# The fuzz tree: clang, libFuzzer, ASan and UBSan on every object; only loom_fuzz is built.
FUZZ_FLAGS := -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DLOOM_FUZZ=ON

.PHONY: deps plan-deps configure plan-configure build fuzz-build plan test gpu-test calibrate clean

# deps installs every package, plan-deps only those `loom` builds with. --force-unsafe-io: dpkg
# skips its fsync after each unpacked file (what Debian's container images set), a quarter of the
# install's wall time on a fresh root (BENCHMARKS.md); a power cut mid-install is the only risk.
deps: WANT_DEBS = $(DEBS)
plan-deps: WANT_DEBS = $(PLAN_DEBS)
deps plan-deps:
	@missing=$$(for p in $(WANT_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "loom: installing $$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-unsafe-io \
	      $$missing >/dev/null || exit 1; \
	  else \
	    echo "loom: missing Debian packages; run as root:"; \
	    echo "  apt-get install -y --no-install-recommends $$missing"; exit 1; \
	  fi; \
	fi

# `make plan` configures a new build folder without the tests (BUILD_TESTING=OFF: no Catch2,
# Google Benchmark, clang, Jupyter or Open MPI needed; without Open MPI the CPU executor module is
# skipped); `make configure` (and so `make test`) turns them on in the same folder, with
# LOOM_REQUIRE_ALL_TESTS: a missing test tool or Open MPI fails there, no test is skipped.
$(BUILD)/build.ninja: | plan-deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) -DBUILD_TESTING=OFF

plan-configure: plan-deps $(BUILD)/build.ninja

configure: deps
	@grep -qx 'LOOM_REQUIRE_ALL_TESTS:BOOL=ON' $(BUILD)/CMakeCache.txt 2>/dev/null && \
	  grep -qx 'BUILD_TESTING:BOOL=ON' $(BUILD)/CMakeCache.txt && [ -f $(BUILD)/build.ninja ] || \
	  cmake -S . -B $(BUILD) $(CMAKE_FLAGS) -DBUILD_TESTING=ON -DLOOM_REQUIRE_ALL_TESTS=ON

build: configure
	cmake --build $(BUILD) -j $(JOBS)

$(FUZZ_BUILD)/build.ninja: | deps
	cmake -S . -B $(FUZZ_BUILD) $(FUZZ_FLAGS) >/dev/null

fuzz-build: deps $(FUZZ_BUILD)/build.ninja
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target loom_fuzz

# Only the `loom` binary and the libraries it links (no executor modules, tests, benchmarks or
# fuzz tree): the rest builds in `make test`.
plan: plan-configure
	cmake --build $(BUILD) -j $(JOBS) --target loom
	./$(BUILD)/loom plan --model $(MODEL) --cluster $(CLUSTER) --gpus $(GPUS) --global-batch $(BATCH) $(if $(SEQ),--seq $(SEQ))

test: build fuzz-build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE gpu

# On a machine with an NVIDIA GPU: CUDA build, GPU kernel tests, loom vs PyTorch GPT-2 throughput.
gpu-test:
	executor/cuda/gpu_test.sh

# On a GPU: the profile (GEMMs, attention, bandwidth, launch, optimizer, memory) with the GEMM
# model fitted to it, then the single-GPU configurations under traces/h100 run against it.
calibrate:
	executor/cuda/calibrate_run.sh

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)

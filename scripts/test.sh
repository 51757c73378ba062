#!/usr/bin/env bash
# README's test command: set up, build, run the whole unit suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
ctest --test-dir "${CALQ_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" --timeout 600

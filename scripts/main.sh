#!/usr/bin/env bash
# README's main job: set up, build, then the whole workflow on Fashion-MNIST
# (`calq run`; extra arguments are passed on, e.g. --model resnet --bits 4/4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh main
exec "${CALQ_BUILD_DIR:-build}/calq" run "$@"

#!/usr/bin/env bash
# Build the dt-scheduler image without network access from inside the build: the wheels are built
# on this machine (where pip reaches its index), then the image builds from them alone.
#
#   deploy/build-image.sh [TAG]          TAG defaults to dt-scheduler:0.1.0
#
# Environment: BASE (base image, default python:3.11-slim; the tests use local/debian-python:bookworm),
# PYTHON (the interpreter that builds the wheels: same minor version as the image's, default python3),
# DOCKER (default docker), KEEP_CONTEXT=1 (keep the staged build context and print its path).
# Wheels are built for the host's platform: build on the same architecture (linux/amd64 here) and the
# same Python minor version as BASE.
set -euo pipefail
TAG="${1:-dt-scheduler:0.1.0}"
BASE="${BASE:-python:3.11-slim}"
PYTHON="${PYTHON:-python3}"
DOCKER="${DOCKER:-docker}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

ctx="$(mktemp -d "${TMPDIR:-/tmp}/dt-image.XXXXXX")"
cleanup() { if [ "${KEEP_CONTEXT:-}" = 1 ]; then echo "build context kept: $ctx" >&2; else rm -rf "$ctx"; fi; }
trap cleanup EXIT

# A minimal context: what the Dockerfile copies, nothing else (no .git, no .venv).
mkdir -p "$ctx/deploy" "$ctx/wheelhouse"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$ctx/"
cp -r "$ROOT/scheduler" "$ctx/scheduler"
find "$ctx/scheduler" -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$ROOT/deploy/Dockerfile" "$ROOT/deploy/probe.py" "$ctx/deploy/"

# Every wheel the image needs, built or fetched here: the project's dependencies, setuptools and
# wheel (the builder stage builds the project in an isolated environment from these), and
# async-timeout, which redis needs on Python < 3.11.3 (Debian bookworm has 3.11.2) and which pip
# would skip on a newer host Python.
echo "building wheels with $("$PYTHON" --version 2>&1) ..." >&2
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$ctx/wheelhouse" \
  "$ctx[otel]" "async-timeout>=4.0.3" "setuptools>=68" wheel >&2
rm -rf "$ctx/build" "$ctx"/*.egg-info

echo "building $TAG from $BASE ..." >&2
"$DOCKER" build --network host --build-arg "BASE=$BASE" --build-arg PIP_NO_INDEX=1 \
  -f "$ctx/deploy/Dockerfile" -t "$TAG" "$ctx" >&2
echo "$TAG"

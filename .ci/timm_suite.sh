#!/usr/bin/env bash
# timm's own model tests (tests/test_models.py of the installed timm's source distribution) on the Iwin
# models, as a peer maintainer would run them (issue #12). Run from an activated environment with
# iwin-models installed (.ci/run calls it after the README test command).
#
# The suite is patched in exactly two places, nothing else:
#   (a) its conftest imports iwin_models (registers the models with timm before test_models.py collects);
#   (b) `iwin` is added to its FEAT_INTER_FILTERS allow-list (modules with forward_intermediates).
# Pretrained tests run offline: TORCH_HOME is a fresh temp dir whose hub cache .ci/timm_cache.py fills with
# random checkpoints in the official file names and layout (key manifests from $IWIN_FIXTURES/keys).
#
# Which models: IWIN_TIMM_SUITE_K (a pytest -k expression), default "iwin_tiny" — every timm test of
# Iwin-T (forward, backward, cfgs, TorchScript, features, forward_intermediates, FX, FX+TorchScript,
# pretrained loading) in ~2 min on 2 cores; IWIN_TIMM_SUITE_K=iwin runs every registered Iwin model.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
k="${IWIN_TIMM_SUITE_K:-iwin_tiny}"
cache_filter="${IWIN_TIMM_SUITE_CACHE:-*${k}*}"   # which pretrained tags get a stand-in checkpoint

version="$(python -c 'import timm; print(timm.__version__)')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-binary :all: --no-deps "timm==$version" -d "$work/sdist"
tar xzf "$work/sdist/timm-$version.tar.gz" -C "$work"
src="$work/timm-$version"
# The unpacked package next to tests/ would shadow the installed timm on sys.path (tests/ is a package,
# so pytest puts its parent first): remove it so the tests exercise what users install (same version).
rm -rf "$src/timm"

printf '\nimport iwin_models  # noqa: E402,F401  (added by iwin-models .ci/timm_suite.sh)\n' >> "$src/tests/conftest.py"
sed -i "s/^FEAT_INTER_FILTERS = \[/FEAT_INTER_FILTERS = ['iwin', /" "$src/tests/test_models.py"
if ! grep -q "^FEAT_INTER_FILTERS = \['iwin', " "$src/tests/test_models.py"; then
  echo ".ci/timm_suite.sh: FEAT_INTER_FILTERS not found in timm $version tests/test_models.py" >&2
  exit 1
fi

export TORCH_HOME="$work/torch_home" HF_HUB_OFFLINE=1
python "$repo/.ci/timm_cache.py" "$TORCH_HOME/hub/checkpoints" "$cache_filter"

cd "$src"
echo ".ci/timm_suite.sh: timm $version tests/test_models.py -k '$k'"
python -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning \
  tests/test_models.py -k "$k" "$@"

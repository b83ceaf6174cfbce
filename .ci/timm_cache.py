"""Fill a torch.hub cache with random checkpoints in the authors' layout for timm's pretrained tests.

timm's ``test_model_load_pretrained`` / ``test_model_features_pretrained`` call
``create_model(name, pretrained=True)``, which reads ``$TORCH_HOME/hub/checkpoints/<file of the cfg url>``
before it tries the network. The official files cannot be downloaded in CI, so this writes, for every
pretrained Iwin tag that matches the filters, a stand-in with the official file name and the official
layout (``{'model': state_dict}`` with the authors' key names):

* from the key manifest in ``$IWIN_FIXTURES/keys`` when there is one for that file (the exact keys and
  shapes of the released checkpoint);
* otherwise from the architecture itself (built on the meta device), renamed to the authors' keys the
  way ``tests/test_iwin_timm.py::to_official`` does (their ``layers.{i-1}.downsample`` is our
  ``layers.{i}.downsample``, their ``head`` our ``head.fc``).

Each tensor is one random row broadcast over the leading dims (a stride-0 view, saved as the row
only), so even the 197M-parameter Iwin-L stand-in is a few MB and the cache fills in seconds.

Usage: python .ci/timm_cache.py CACHE_DIR [FNMATCH_FILTER ...]   (default filter: iwin*)
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from pathlib import Path

import timm
import torch

import iwin_models  # noqa: F401  (registers the Iwin models)

# file name stem of the release -> key manifest (tests/../shared/fixtures/keys)
MANIFESTS = {
    "iwin_tiny_patch4_window7_224": "iwin_tiny_224",
    "iwin_small_patch4_window7_224": "iwin_small_224",
    "iwin_base_patch4_window7_224": "iwin_base_224",
    "iwin_large_patch4_window7_224_22kto1k": "iwin_large_224",
    "iwin_large_patch4_window7_224_22k": "iwin_large_224_22k",
    "iwin_base_patch4_window16_1024": "iwin_base_1024",
}


def random_row_tensor(shape, dtype: str, g: torch.Generator) -> torch.Tensor:
    if dtype == "int64":
        return torch.full(shape, 160000, dtype=torch.int64)
    row = torch.randn(shape[-1] if shape else 1, generator=g) * 0.02
    return row.expand(shape) if shape else row.reshape(())


def shapes_from_manifest(path: Path) -> dict[str, tuple[list[int], str]]:
    return {k: (shape, dtype) for k, (shape, dtype) in json.loads(path.read_text())["keys"].items()}


def shapes_from_model(name: str) -> dict[str, tuple[list[int], str]]:
    model = timm.create_model(name, pretrained=False, device="meta")
    out = {}
    for k, v in model.state_dict().items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            k = f"layers.{int(m[1]) - 1}.downsample.{m[2]}"
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        out[k] = (list(v.shape), str(v.dtype).replace("torch.", ""))
    return out


def fill(cache: Path, filters: list[str], keys_dir: Path | None) -> list[str]:
    cache.mkdir(parents=True, exist_ok=True)
    written = []
    for name in timm.list_models("iwin*", pretrained=True):
        if not any(fnmatch.fnmatch(name, f) for f in filters):
            continue
        file = os.path.basename(timm.models.get_pretrained_cfg(name).url)
        if (cache / file).exists():
            continue
        manifest = keys_dir / f"{MANIFESTS.get(file[:-len('.pth')], '-')}.json" if keys_dir else None
        shapes = shapes_from_manifest(manifest) if manifest and manifest.is_file() else shapes_from_model(name)
        g = torch.Generator().manual_seed(len(written))
        sd = {k: random_row_tensor(shape, dtype, g) for k, (shape, dtype) in shapes.items()}
        torch.save({"model": sd}, cache / file)
        written.append(f"{file} ({'manifest' if manifest and manifest.is_file() else 'architecture'})")
    return written


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    fixtures = os.environ.get("IWIN_FIXTURES")
    keys_dir = Path(fixtures) / "keys" if fixtures else None
    written = fill(Path(argv[0]), argv[1:] or ["iwin*"], keys_dir)
    print(f"timm_cache: wrote {len(written)} stand-in checkpoint(s) to {argv[0]}: {', '.join(written) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

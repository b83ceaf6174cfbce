"""The model card ``save_pretrained`` writes: smp's template, with a loading snippet that runs.

smp's template loads the folder with ``smp.from_pretrained`` and no ``import iwin_models``, which then fails
("module 'segmentation_models_pytorch' has no attribute 'IwinUPerNet'"): :func:`runnable_usage` replaces it.
"""
from __future__ import annotations

import re

__all__ = ["CARD_RUN_HERE", "runnable_usage"]

CARD_RUN_HERE = ('Run the code in this folder, or replace `"."` by the folder\'s path or, once uploaded '
                 '(`huggingface-cli upload <org>/<repo> .`), by the repository id.')
# the loading snippet of smp's card template, which lacks ``import iwin_models`` (smp.from_pretrained then fails:
# "module 'segmentation_models_pytorch' has no attribute 'IwinUPerNet'")
_SMP_CARD_LOAD = re.compile(
    r"```python\nimport segmentation_models_pytorch as smp\n\nmodel = smp\.from_pretrained\([^)]*\)\n```")
_SMP_CARD_USAGE = f"""{CARD_RUN_HERE}

```python
import segmentation_models_pytorch as smp

import iwin_models  # noqa: F401  (puts IwinUPerNet in smp's namespace, where smp.from_pretrained looks it up)
from iwin_models import SAMPLE_IMAGE

model = smp.from_pretrained(".").eval()  # from the hub: smp.from_pretrained("<org>/<repo>")
labels = iwin_models.segment(model, SAMPLE_IMAGE)  # (H, W) class indices, the authors' test protocol
names = model.class_names or [f"class {{i}}" for i in range(model.num_classes)]
print(labels.shape, [names[i] for i in sorted(set(labels.flat))[:5]])
```"""


def runnable_usage(card):
    """``card`` with smp's loading snippet replaced by one that runs (added when smp changed its template)."""
    card.text, count = _SMP_CARD_LOAD.subn(lambda _: _SMP_CARD_USAGE, card.text, count=1)
    if not count:
        card.text += f"\n## Usage\n\n{_SMP_CARD_USAGE}\n"
    return card

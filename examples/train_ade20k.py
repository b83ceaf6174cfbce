"""Train Iwin-T UPerNet on ADE20K with the authors' recipe (the same as ``iwin-seg train``).

    python examples/train_ade20k.py --data-root data/ADEChallengeData2016 --work-dir work_dirs/iwin_t
    torchrun --nproc_per_node=8 examples/train_ade20k.py --data-root data/ADEChallengeData2016

Every option (``--help``) overrides the recipe; ``--resume`` continues from work-dir/latest.pth.
"""
import sys

from iwin_models.apps.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

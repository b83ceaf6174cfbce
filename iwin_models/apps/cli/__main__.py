"""``python -m iwin_models.apps.cli`` (and ``torchrun -m iwin_models.apps.cli``): the ``iwin-seg`` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())

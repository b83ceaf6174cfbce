"""``python -m iwin_models.apps.cli.det`` (and ``torchrun -m iwin_models.apps.cli.det``): the ``iwin-det`` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m crossregion`` (also what ``torchrun -m crossregion train ...`` runs)."""

import sys

from crossregion.cli import main

sys.exit(main())

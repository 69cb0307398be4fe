"""``python -m hpcdiff`` runs the command line."""

import sys

from hpcdiff.cli import main

sys.exit(main())

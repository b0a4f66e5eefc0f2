"""``python -m visiondistill.cli …`` runs the ``visiondistill`` command."""

import sys

from visiondistill.cli import main

sys.exit(main())

"""``python -m hwlm`` is the ``hwlm`` command."""
import sys

from hwlm.cli import main

sys.exit(main())

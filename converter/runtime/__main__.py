"""``python -m converter.runtime`` (and the zipapp bundle) run the device-side command."""

import sys

from .cli import main

sys.exit(main())

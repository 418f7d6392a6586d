"""``python -m m2_code_store`` is ``m2-code-store``."""

import sys

from m2_code_store.cli import main

sys.exit(main())

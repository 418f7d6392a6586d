"""``python -m loan_discharge``: the discharge_loans command."""

import sys

from loan_discharge.discharge_loans import main

sys.exit(main())

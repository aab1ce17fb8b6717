"""`python -m core ...`: the TransferScope command line."""
import sys

from core.cli import main

sys.exit(main())

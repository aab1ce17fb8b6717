"""`python -m core ...`: the TransferScope command line."""
import gc
import sys

from core.cli import main

code = main()
gc.freeze()  # exit without the final collection walking every object torch imported (0.5-1.3 s)
sys.exit(code)

"""Entry point of ``python -m runtime.soundtrack`` (the command itself is ``cli.py``)."""
import sys

from ..cli import run_main
from .cli import PROG, main

sys.exit(run_main(main, prog=PROG))

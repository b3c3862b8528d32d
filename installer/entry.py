"""PyInstaller's entry script: the launcher (launcher/__init__.py) as the bundled app's one executable."""

import multiprocessing
import sys

from launcher import main

if __name__ == "__main__":
    # First: in a frozen app the image decoders' worker processes (core.data.decode, started with "spawn")
    # are this executable run with --multiprocessing-fork; this runs them instead of the launcher.
    multiprocessing.freeze_support()
    sys.exit(main())

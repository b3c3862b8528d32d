"""PyInstaller's entry script: the launcher (launcher/__init__.py) as the bundled app's one executable."""

import sys

from launcher import main

if __name__ == "__main__":
    sys.exit(main())

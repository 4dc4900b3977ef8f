import sys

from textguard.cli import main

sys.exit(main())

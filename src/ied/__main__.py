import sys

from ied.cli import main

sys.exit(main())

import sys

from mirasol.cli import main

sys.exit(main())

import sys

from hafs.cli import main

sys.exit(main())

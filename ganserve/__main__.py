import sys

from ganserve.cli import main

sys.exit(main())

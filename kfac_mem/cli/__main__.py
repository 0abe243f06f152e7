import sys

from kfac_mem.cli import main

sys.exit(main())

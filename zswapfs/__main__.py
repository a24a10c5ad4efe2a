import sys

from zswapfs.cli import main

sys.exit(main())

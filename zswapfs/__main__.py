import sys

from zswapfs.cli.main import main

sys.exit(main())

import sys

from stock_platform.cli import main

sys.exit(main())

import sys

from aotml.cli import main

sys.exit(main())

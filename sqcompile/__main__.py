import sys

from sqcompile.cli import main

sys.exit(main())

import sys

from resnetkit.cli import main

sys.exit(main())

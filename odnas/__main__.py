import sys

from odnas.cli import main

sys.exit(main())

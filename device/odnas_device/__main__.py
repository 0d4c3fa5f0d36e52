import sys

from odnas_device.agent import main

sys.exit(main())

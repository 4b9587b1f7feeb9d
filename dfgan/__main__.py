import sys

from dfgan.cli import main

sys.exit(main())

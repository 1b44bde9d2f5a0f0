import sys

from rayclust.cli import main

sys.exit(main())

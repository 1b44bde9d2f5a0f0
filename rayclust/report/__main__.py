import sys

from rayclust.report.cli import main

sys.exit(main())

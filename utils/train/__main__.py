"""`python -m utils.train …`: see utils.train.cli."""
import sys

from utils.train.cli import main

sys.exit(main())

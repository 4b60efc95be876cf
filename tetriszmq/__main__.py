import sys

from tetriszmq.cli import main

sys.exit(main())

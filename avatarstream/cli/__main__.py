import sys

from avatarstream.cli import main

sys.exit(main())

import sys

from rpcworker.cmd.daemon import main

sys.exit(main())

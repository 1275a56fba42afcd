import sys

from rpcworker.cmd.worker import main

sys.exit(main())

import sys

from prunekit.cli.main import main

sys.exit(main())

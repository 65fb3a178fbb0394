import sys

from samdeploy.cli import main

sys.exit(main())

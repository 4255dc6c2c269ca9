"""``python -m rps.server start|stop|status|destroy|add-user|grant``: a team's tracking server.

The code lives in :mod:`rps.team.server` (and docs/deployment.md says how to deploy it); this
module keeps the command where users expect it.
"""

import sys

from rps.team.server import main

if __name__ == "__main__":
    sys.exit(main())

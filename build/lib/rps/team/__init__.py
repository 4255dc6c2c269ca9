"""A team's deployment: the tracking server on PostgreSQL with sign-in (server.py) and the
recovery of runs that lost their server (recover.py). Imports rps.tracking and below."""

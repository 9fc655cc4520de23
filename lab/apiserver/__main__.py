"""`python3 -m tailor.lab.apiserver`: serve the lab's API (server.main)."""
import sys

from tailor.lab.apiserver import server

sys.exit(server.main())

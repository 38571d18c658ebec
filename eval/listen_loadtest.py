"""Load test for ``audiogen listen serve``: N simulated participants at once over HTTP.

    audiogen listen serve runs/pilot --port 8000 --new-sessions-per-minute 100000 --sessions-per-ip 0 &
    python eval/listen_loadtest.py --url http://127.0.0.1:8000 --participants 200 --db runs/pilot/listen.db

Prints one JSON object (latency p50/p95/p99 per request kind; answers lost or duplicated).
The logic lives in ``audiogen/listening/loadtest.py``.
"""

import sys

from audiogen.listening.loadtest import main

if __name__ == "__main__":
    sys.exit(main())

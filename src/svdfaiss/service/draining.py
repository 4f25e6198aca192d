"""Draining: set when `svdfaiss serve --drain-seconds` got SIGTERM and keeps answering for
those seconds before it stops. While set, /readyz answers 503 and every response carries
`Connection: close`, so a proxy or an orchestrator moves to other replicas, and no
keep-alive connection is left open for the shutdown to close under a request."""

import threading

DRAINING = threading.Event()

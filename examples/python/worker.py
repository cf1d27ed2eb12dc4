"""A stickyd worker in Python: an HTTP server that reads the client's address
from the PROXY header stickyd sends, with Twisted's HAProxy endpoint
(twisted.protocols.haproxy: PROXY v1 and v2; Debian: python3-twisted).

    stickyd --listen :3000 --workers 4 -- python3 examples/python/worker.py

It listens where stickyd says (PORT on 127.0.0.1, or the Unix socket SOCKET)
and answers GET / with "worker <id> (pid <pid>) says hello to <client ip>".
Twisted stops on SIGTERM.
"""
import os

from twisted.internet import endpoints, reactor
from twisted.web import resource, server


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        ip = request.getClientAddress().host  # from the PROXY header
        worker = os.environ.get("STICKYD_WORKER_ID", "")
        return f"worker {worker} (pid {os.getpid()}) says hello to {ip}\n".encode()


if os.environ.get("SOCKET"):
    where = f"haproxy:unix:{os.environ['SOCKET']}"
else:
    where = f"haproxy:tcp:port={os.environ['PORT']}:interface=127.0.0.1"
endpoints.serverFromString(reactor, where).listen(server.Site(Hello()))
reactor.run()

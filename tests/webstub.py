"""
A tiny twisted.web server in tests, standing in for endpoints that are
not etcd, or not a usable one: fixed answers by path, over HTTP or TLS.
"""

import json

from twisted.internet import reactor, ssl
from twisted.web import resource, server


class StubResource(resource.Resource):
    """
    Answers C{routes[path]}, a C{(code, content type, body)}; twisted.web's
    HTML 404 page for any other path.
    """

    isLeaf = True

    def __init__(self, routes):
        resource.Resource.__init__(self)
        self.routes = routes

    def render(self, request):
        if request.path not in self.routes:
            return resource.NoResource().render(request)
        code, content_type, body = self.routes[request.path]
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        return body


def serve(case, routes, interface="127.0.0.1", certs=None):
    """
    A web server on a free port of C{interface}, over TLS with the server
    certificate of C{certs} if given; returns its URL.
    """
    site = server.Site(StubResource(routes))
    if certs is None:
        port = reactor.listenTCP(0, site, interface=interface)
        scheme = "http"
    else:
        with open(certs.server_cert, "rb") as cert, open(certs.server_key, "rb") as key:
            options = ssl.PrivateCertificate.loadPEM(cert.read() + key.read()).options()
        port = reactor.listenSSL(0, site, options, interface=interface)
        scheme = "https"
    case.addCleanup(port.stopListening)
    return f"{scheme}://{interface}:{port.getHost().port}"


def json_response(data):
    return (200, b"application/json", json.dumps(data).encode("ascii"))

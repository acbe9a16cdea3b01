"""
What an endpoint sends back, or how reaching it failed, turned into values
or into errors that say what to fix: an endpoint that is not etcd's JSON
gateway, or TLS that does not work, is named with the fix rather than
reported as a JSON decoding error or an OpenSSL error list.
"""

import json

from OpenSSL import SSL
from service_identity import VerificationError

from idetcd.etcd.errors import NotEtcdGateway, TlsFailed

#: What etcd's gateway answers (HTTP 400) to a client certificate with a
#: Common Name while users are on: it cannot pass the name on as the user.
_COMMON_NAME_REFUSED = b"CommonName of client sending a request against gateway"

#: What an endpoint must be, said with every error about one that is not.
EXPECTED = "etcd's client URL (usually port 2379) of etcd 3.4 or later, with its gRPC gateway on"


def _first_line(content):
    text = content.decode("utf-8", "replace").strip()
    return text.splitlines()[0][:100] if text else "an empty body"


def json_reply(endpoint, path, response, content):
    """
    The JSON C{content} of C{response} to a request for C{path} on
    C{endpoint}; L{NotEtcdGateway} or L{TlsFailed} when it is not JSON.
    """
    try:
        return json.loads(content)
    except ValueError:
        pass
    if _COMMON_NAME_REFUSED in content:
        raise TlsFailed(
            f"etcd at {endpoint} refuses client certificates that have a Common Name while"
            " authentication is on: give 'tls' a client certificate without one"
            " (the user comes from 'credentials')"
        )
    content_type = (response.headers.getRawHeaders(b"content-type") or [b"no content type"])[0]
    raise NotEtcdGateway(
        f"{endpoint}{path} answered HTTP {response.code}"
        f" ({content_type.decode('latin-1')}: {_first_line(content)!r}), not etcd's JSON:"
        f" 'endpoint' must be {EXPECTED}"
    )


def _tls_problem(failure):
    """
    The TLS error under C{failure}, which the HTTP client may wrap in lists
    of reasons, or C{None}.
    """
    if failure.check(SSL.Error, VerificationError):
        return failure.value
    for reason in getattr(failure.value, "reasons", ()):
        problem = _tls_problem(reason)
        if problem is not None:
            return problem
    return None


def _openssl_text(error):
    texts = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple)] if error.args else []
    return "; ".join(texts) or str(error)


def connection_error(endpoint, failure):
    """
    L{TlsFailed} naming C{endpoint} and the fix when C{failure} is a failed
    TLS handshake, else C{failure}'s own exception.
    """
    problem = _tls_problem(failure)
    if problem is None:
        return failure.value
    if isinstance(problem, VerificationError):
        return TlsFailed(
            f"certificate verify failed for {endpoint}: its certificate does not name this host"
            f" ({problem}); list etcd by a name or address its certificate holds"
        )
    text = _openssl_text(problem)
    if "certificate verify failed" in text:
        return TlsFailed(
            f"certificate verify failed for {endpoint}: {text}; give 'tls' the CA file"
            " that signed etcd's certificate (without one, the system's trust store is used)"
        )
    if "alert" in text:
        return TlsFailed(
            f"etcd at {endpoint} refused the TLS handshake ({text}): it wants a client"
            " certificate its --trusted-ca-file signed: tls CERT KEY [CACERT]"
        )
    return TlsFailed(f"TLS to {endpoint} failed ({text}): does it speak TLS? If not, write http://")

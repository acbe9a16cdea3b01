"""
The etcd settings of a Corefile's C{idetcd} block, checked: C{endpoint}
URLs, C{tls} files, C{credentials}.  Each reader takes the directive's
arguments and raises L{ValueError} saying what is wrong; the Corefile's
reader puts it at the directive's line.
"""

from urllib.parse import urlsplit

from idetcd.etcd.auth import Credentials
from idetcd.etcd.connections import request_url
from idetcd.etcd.tls import TlsSettings


def _endpoint(text):
    expected = f"endpoint {text!r} is not an etcd URL such as http://127.0.0.1:2379"
    try:
        url = urlsplit(text)
        port = url.port
        request_url(text).to_uri()  # what the HTTP client takes: no IPv6 zone, say
    except ValueError as e:
        raise ValueError(f"{expected}: {e}") from None
    if url.scheme not in ("http", "https") or not url.hostname or port == 0:
        raise ValueError(f"{expected} (or the word embedded)")
    if url.username is not None or url.password is not None:
        raise ValueError(f"{expected}: user names and passwords are not supported")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"{expected}: it must not have a path, query or fragment")
    return f"{url.scheme}://{url.netloc}"


def read_endpoints(args):
    """
    The etcd URLs of C{endpoint}, or C{("embedded",)}.
    """
    if "embedded" in args:
        if len(args) > 1:
            raise ValueError(
                "endpoint embedded runs etcd inside this process:"
                " it cannot be listed with other endpoints"
            )
        return ("embedded",)
    out = []
    for arg in args:
        url = _endpoint(arg)
        if url in out:
            raise ValueError(f"endpoint lists {url} twice")
        out.append(url)
    return tuple(out)


def read_tls(args):
    """
    The L{TlsSettings} of C{tls [CERT [KEY [CACERT]]]}, its files read.
    """
    tls = TlsSettings.from_args(args)
    tls.policy()  # reads the files: a bad one is reported at its line
    return tls


def _read_password(path):
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise ValueError(f"credentials cannot read the password file {path}: {reason}") from None
    if not password:
        raise ValueError(f"credentials: the password file {path} is empty")
    return password


def read_credentials(args):
    """
    C{USERNAME PASSWORD}, as CoreDNS's etcd plugin has it, or C{USERNAME
    file PATH} to keep the password out of the Corefile.
    """
    if len(args) == 3 and args[1] != "file":
        raise ValueError(
            f"credentials takes USERNAME PASSWORD or USERNAME file PATH, got {' '.join(map(repr, args))}"
        )
    user = args[0]
    password = args[1] if len(args) == 2 else _read_password(args[2])
    if not user.strip() or not password:
        raise ValueError("credentials needs a user name and a password that are not empty")
    return Credentials(user, password)

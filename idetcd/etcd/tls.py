"""
TLS to etcd, as CoreDNS's etcd plugin sets it up with C{tls [CERT [KEY
[CACERT]]]}: etcd's certificate verified against a CA (or the system's
store), the endpoint's host name or IP address checked against it, and a
client certificate when given.
"""

import attr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class TlsFilesError(ValueError):
    """
    A certificate, key or CA file that cannot be used; the message names it.
    """


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsFilesError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def _certificates(path, what):
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFilesError(f"the {what} {path} holds no PEM certificate") from None
    return certificates


def _pem(certificate):
    return ssl.Certificate.loadPEM(certificate.public_bytes(serialization.Encoding.PEM))


@attr.s(frozen=True, auto_attribs=True)
class TlsSettings:
    """
    The C{tls} directive: a client certificate and its key (both or
    neither), and the CA file that signs etcd's certificates (C{None}: the
    system's trust store).
    """

    cert: str = None
    key: str = None
    ca: str = None

    @classmethod
    def from_args(cls, args):
        """
        CoreDNS's meaning of C{tls}'s arguments: none, C{CACERT}, C{CERT
        KEY} or C{CERT KEY CACERT}.
        """
        if len(args) == 1:
            return cls(ca=args[0])
        return cls(*args)

    def policy(self):
        """
        The HTTPS policy for treq's agent; reads the files now, so that a
        bad one fails with L{TlsFilesError} before any connection.
        """
        trust_root = None
        if self.ca is not None:
            trust_root = ssl.trustRootFromCertificates(
                [_pem(certificate) for certificate in _certificates(self.ca, "CA file")]
            )
        client_certificate = None
        if self.cert is not None:
            client_certificate = self._client_certificate()
        return _EtcdTls(trust_root, client_certificate)

    def _client_certificate(self):
        certificate = _certificates(self.cert, "client certificate")[0]
        data = _read(self.key, "client key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise TlsFilesError(f"the client key {self.key} is encrypted: give an unencrypted key") from None
        except ValueError:
            raise TlsFilesError(f"the client key {self.key} holds no PEM private key") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        encoding = serialization.Encoding.DER
        if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
            encoding, public
        ):
            raise TlsFilesError(f"the client key {self.key} does not belong to the certificate {self.cert}")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return ssl.PrivateCertificate.fromCertificateAndKeyPair(
            _pem(certificate), ssl.KeyPair.load(pem, crypto.FILETYPE_PEM)
        )


@implementer(IPolicyForHTTPS)
@attr.s(frozen=True)
class _EtcdTls:
    """
    Verifies every etcd endpoint against one trust root, presenting one
    client certificate.
    """

    trust_root = attr.ib()
    client_certificate = attr.ib()

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self.trust_root,
            clientCertificate=self.client_certificate,
        )

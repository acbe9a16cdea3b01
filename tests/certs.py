"""
Certificates made for a test with C{cryptography}: a CA, a server
certificate for 127.0.0.1, ::1 and localhost, and a client certificate, each
written as PEM files in a directory of the test's.
"""

import datetime
import ipaddress
import os

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1", "::1")


def _name(common_name=None, organization=None):
    attributes = [(NameOID.ORGANIZATION_NAME, organization), (NameOID.COMMON_NAME, common_name)]
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes if value])


def _write(path, *pems):
    with open(path, "wb") as f:
        f.write(b"".join(pems))
    return path


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@attr.s(frozen=True, auto_attribs=True)
class _Authority:
    key: object
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            cls._builder(_name(common_name), _name(common_name), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @staticmethod
    def _builder(subject, issuer, public_key):
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, subject, usages, names=(), addresses=()):
        """
        A key and a certificate for C{subject}, signed by this CA.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(subject, self.certificate.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        alternatives = [x509.DNSName(name) for name in names] + [
            x509.IPAddress(ipaddress.ip_address(address)) for address in addresses
        ]
        if alternatives:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


@attr.s(frozen=True, auto_attribs=True)
class Certificates:
    """
    The PEM files of one test's certificates.
    """

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    #: A client certificate with a Common Name, which etcd's gateway
    #: refuses while users are on.
    named_client_cert: str
    named_client_key: str


def make_certificates(directory, ca_name="idetcd test CA"):
    """
    Write a fresh CA, a server certificate and a client certificate into
    C{directory}.  The server certificate also serves as a client one:
    etcd's JSON gateway connects to etcd's own gRPC port with it.  The
    client certificate has no common name: with client certificates and
    users on, etcd's gateway refuses one that has (HTTP 400).
    """
    os.makedirs(directory, exist_ok=True)
    ca = _Authority.create(ca_name)
    server_key, server_cert = ca.issue(
        _name("etcd"),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        names=SERVER_NAMES,
        addresses=SERVER_ADDRESSES,
    )
    client_key, client_cert = ca.issue(_name(organization="idetcd"), [ExtendedKeyUsageOID.CLIENT_AUTH])
    named_key, named_cert = ca.issue(_name("idetcd"), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def path(filename):
        return os.path.join(directory, filename)

    pem = serialization.Encoding.PEM
    return Certificates(
        ca=_write(path("ca.pem"), ca.certificate.public_bytes(pem)),
        server_cert=_write(path("server.pem"), server_cert.public_bytes(pem)),
        server_key=_write(path("server-key.pem"), _key_pem(server_key)),
        client_cert=_write(path("client.pem"), client_cert.public_bytes(pem)),
        client_key=_write(path("client-key.pem"), _key_pem(client_key)),
        named_client_cert=_write(path("named-client.pem"), named_cert.public_bytes(pem)),
        named_client_key=_write(path("named-client-key.pem"), _key_pem(named_key)),
    )

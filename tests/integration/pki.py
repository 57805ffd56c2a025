"""Independent X.509-SVID minting for the integration tests (Python `cryptography`).

The daemon's own certificate code is not used here on purpose: the tests' certificates come from a
second implementation, and the knobs make the defective SVIDs the rejection tests need.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = lambda: dt.datetime.now(dt.timezone.utc)  # noqa: E731


def _key():
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: list = field(default_factory=list)  # intermediates after the leaf

    def cert_pem(self) -> bytes:
        out = self.cert.public_bytes(serialization.Encoding.PEM)
        for c in self.chain:
            out += c.public_bytes(serialization.Encoding.PEM)
        return out

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(self.cert_pem())
        key.write_bytes(self.key_pem())
        key.chmod(0o600)
        return cert, key

    @property
    def serial(self) -> int:
        return self.cert.serial_number


class CA:
    """A SPIFFE signing authority for one trust domain (root, or intermediate below another)."""

    def __init__(self, trust_domain: str, parent: Optional["CA"] = None, *,
                 lifetime: dt.timedelta = dt.timedelta(days=1)):
        self.trust_domain = trust_domain
        self.key = _key()
        self.parent = parent
        issuer_key = parent.key if parent else self.key
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spiffe-tunnel tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME,
                                             f"{trust_domain} {'intermediate' if parent else 'root'}")])
        now = _NOW()
        b = (x509.CertificateBuilder()
             .subject_name(name)
             .issuer_name(parent.cert.subject if parent else name)
             .public_key(self.key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + lifetime)
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                            critical=True)
             .add_extension(x509.SubjectAlternativeName(
                 [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                            critical=False))
        self.cert = b.sign(issuer_key, hashes.SHA256())

    @property
    def root(self) -> "CA":
        return self.parent.root if self.parent else self

    def chain_to_root(self) -> list:
        """Certificates from this CA up to, excluding, the root."""
        return [] if self.parent is None else [self.cert] + self.parent.chain_to_root()

    def bundle_pem(self) -> bytes:
        return self.root.cert.public_bytes(serialization.Encoding.PEM)

    def write_bundle(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.bundle_pem())
        return path

    def issue(self, spiffe_id: Optional[str] = None, *, uris: Optional[Sequence[str]] = None,
              is_ca: bool = False, digital_signature: bool = True, key_cert_sign: bool = False,
              crl_sign: bool = False, key_usage: bool = True, eku_client: bool = True,
              eku_server: bool = True, not_before: Optional[dt.datetime] = None,
              not_after: Optional[dt.datetime] = None, dns: Sequence[str] = (),
              key=None) -> Issued:
        """A leaf X.509-SVID; every keyword bends one SPIFFE rule for rejection tests. `key`: the
        leaf's private key (default a fresh EC P-256 key)."""
        key = key or _key()
        now = _NOW()
        uris = list(uris) if uris is not None else [spiffe_id]
        san = [x509.UniformResourceIdentifier(u) for u in uris if u] + [x509.DNSName(d) for d in dns]
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
             .issuer_name(self.cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(not_before or now - dt.timedelta(minutes=1))
             .not_valid_after(not_after or now + dt.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=True)
        if key_usage:
            b = b.add_extension(x509.KeyUsage(digital_signature, False, True, False, True,
                                              key_cert_sign, crl_sign, False, False), critical=True)
        ekus = ([ExtendedKeyUsageOID.SERVER_AUTH] if eku_server else []) + \
               ([ExtendedKeyUsageOID.CLIENT_AUTH] if eku_client else [])
        if ekus:
            b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return Issued(cert, key, self.chain_to_root())

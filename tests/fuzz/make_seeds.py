#!/usr/bin/env python3
"""Writes the generated part of the seed corpora under tests/fuzz/corpus/ (committed; rerun only
to refresh them): bundles in PEM, DER and SPIFFE JWKS form, Workload API responses, record-layer
scripts, and real ClientHellos captured from OpenSSL over a memory BIO."""
from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import pki  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
YEARS = dt.timedelta(days=3650)


def write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pb_field(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field."""
    tag, n, out = (number << 3) | 2, len(data), b""
    out += bytes([tag])
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out + data


def bundles_and_responses() -> None:
    root = pki.CA("example.org", lifetime=YEARS)
    inter = pki.CA("example.org", parent=root, lifetime=YEARS)
    fed = pki.CA("partner.test", lifetime=YEARS)
    now = dt.datetime.now(dt.timezone.utc)
    leaf = inter.issue("spiffe://example.org/ns/prod/sa/api", not_after=now + YEARS)
    write("bundle", "root.pem", root.bundle_pem())
    write("bundle", "two.pem", root.bundle_pem() + fed.bundle_pem())
    write("bundle", "root.der", der(root.cert))
    write("bundle", "two.der", der(root.cert) + der(fed.cert))
    x5c = base64.b64encode(der(root.cert)).decode()
    jwks = {"keys": [{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": [x5c]},
                     {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256",
                      "x": "AAAA", "y": "AAAA"}],
            "spiffe_sequence": 3, "spiffe_refresh_hint": 300}
    write("bundle", "spire.jwks", json.dumps(jwks, indent=2).encode())
    write("bundle", "empty-keys.jwks", b'{"keys": []}')
    key = leaf.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    chain = der(leaf.cert) + der(inter.cert)
    svid = (pb_field(1, b"spiffe://example.org/ns/prod/sa/api") + pb_field(2, chain)
            + pb_field(3, key) + pb_field(4, der(root.cert)))
    federated = pb_field(3, pb_field(1, b"spiffe://partner.test") + pb_field(2, der(fed.cert)))
    write("workload_response", "svid.pb", pb_field(1, svid))
    write("workload_response", "svid-federated.pb", pb_field(1, svid) + federated)
    write("workload_response", "two-svids-hint.pb",
          pb_field(1, svid + pb_field(5, b"internal")) + pb_field(1, svid + pb_field(5, b"ext")))
    write("workload_response", "no-svid.pb", federated)


def record_scripts() -> None:
    def blob(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    def sealed(t: int, b: bytes) -> bytes:
        return b"\x01" + bytes([t]) + blob(b)

    key_update = bytes([24, 0, 0, 1, 1])
    ticket = bytes([4, 0, 0, 13]) + b"\0\0\x0e\x10" + b"\0\0\0\1" + b"\0" + b"\0\1x" + b"\0\0"
    for suite in range(3):
        write("record_layer", f"data-{suite}", bytes([suite]) + sealed(23, b"hello")
              + sealed(23, b"x" * 1000) + sealed(21, b"\x01\x00"))
    write("record_layer", "keyupdate", b"\0" + sealed(23, b"a") + sealed(22, key_update)
          + sealed(23, b"b") + sealed(22, ticket) + sealed(22, ticket[:6])
          + sealed(22, ticket[6:]))
    write("record_layer", "padding", b"\0" + b"\x02" + blob(b"data\x17\0\0\0\0"))
    write("record_layer", "raw", b"\0" + b"\0" + blob(b"\x17\x03\x03\x00\x15" + b"\0" * 21))
    write("record_layer", "tamper", b"\x02" + b"\x03\0\x07\x17" + blob(b"payload"))
    write("record_layer", "alert", b"\0" + sealed(21, b"\x02\x28"))


def client_hellos() -> None:
    for name, version in (("tls13", ssl.TLSVersion.TLSv1_3), ("tls12", ssl.TLSVersion.TLSv1_2)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = version
        inbio, outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inbio, outbio, server_hostname="example.org")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outbio.read()
        write("server_handshake", f"clienthello-{name}", b"\x3f" + hello)
        write("server_handshake", f"clienthello-{name}-split", b"\x00" + hello)


if __name__ == "__main__":
    bundles_and_responses()
    record_scripts()
    client_hellos()

"""The SPIFFE verifier holds a peer's chain to OpenSSL's security level (SECLEVEL 2 on Debian):
a peer presenting an RSA-1024 leaf, whose chain is otherwise a valid X.509-SVID of a trusted
trust domain, is refused with the reason in the log. The peer is Python's ssl (OpenSSL) with its
own level lowered so that it can present such a key at all."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import rsa

from daemon import Backend
from test_files_tunnels import A, CLIENT_ID, _tls_client, pki, start_server  # noqa: F401


# Lets the peer load and use a 1024-bit key at all.
LOW_LEVEL = "DEFAULT:@SECLEVEL=0"


def test_rsa_1024_leaf_is_refused_for_the_security_level(pki, tmp_path):
    backend = Backend("echo")
    server, sport = start_server(pki, backend.port)
    try:
        weak = pki["ca"][A].issue(CLIENT_ID, key=rsa.generate_private_key(65537, 1024))
        assert _tls_client(sport, *weak.write(tmp_path, "rsa1024"), ciphers=LOW_LEVEL) == b""
        server.wait_for(r"rejected reason=chain_invalid: peer spiffe://a\.test/client: .*"
                        r"EE certificate key too weak for security level 2 at depth 0")
        time.sleep(0.2)
        assert backend.connections == 0
        # The same identity with an RSA-2048 key passes the same check.
        strong = pki["ca"][A].issue(CLIENT_ID, key=rsa.generate_private_key(65537, 2048))
        assert _tls_client(sport, *strong.write(tmp_path, "rsa2048"), ciphers=LOW_LEVEL) != b""
    finally:
        server.stop()
        backend.close()

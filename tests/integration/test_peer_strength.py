"""The SPIFFE verifier holds a peer's chain to OpenSSL's security level (SECLEVEL 2 on Debian):
a peer presenting an RSA-1024 leaf, whose chain is otherwise a valid X.509-SVID of a trusted
trust domain, is refused with the reason in the log. The peer is Python's ssl (OpenSSL) with its
own level lowered so that it can present such a key at all."""

from __future__ import annotations

import socket
import ssl
import time

from cryptography.hazmat.primitives.asymmetric import rsa

from daemon import Backend
from test_files_tunnels import A, CLIENT_ID, pki, start_server  # noqa: F401 (fixture)


def _present(port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets this peer load and use a 1024-bit key
    ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"ping")
                return s.recv(100)
    except (ssl.SSLError, OSError):
        return b""


def test_rsa_1024_leaf_is_refused_for_the_security_level(pki, tmp_path):
    backend = Backend("echo")
    server, sport = start_server(pki, backend.port)
    try:
        weak = pki["ca"][A].issue(CLIENT_ID, key=rsa.generate_private_key(65537, 1024))
        assert _present(sport, *weak.write(tmp_path, "rsa1024")) == b""
        server.wait_for(r"rejected reason=chain_invalid: peer spiffe://a\.test/client: .*"
                        r"EE certificate key too weak for security level 2 at depth 0")
        time.sleep(0.2)
        assert backend.connections == 0
        # The same identity with an RSA-2048 key passes the same check.
        strong = pki["ca"][A].issue(CLIENT_ID, key=rsa.generate_private_key(65537, 2048))
        assert _present(sport, *strong.write(tmp_path, "rsa2048")) == b"ping"
    finally:
        server.stop()
        backend.close()

"""Proves the UML harness (scripts/uml-run): the guest has kTLS, and OpenSSL offloads to it."""

from __future__ import annotations

import re
from pathlib import Path

from uml import (EXIT_TIMEOUT, mtls_certs, parse_tls_stat, requires_uml,  # noqa: F401 (fixture)
                 tls_stat_delta, uml_run)

pytestmark = requires_uml

TLS_STAT_COUNTERS = ("TlsCurrTxSw", "TlsCurrRxSw", "TlsTxSw", "TlsRxSw", "TlsDecryptError")


def test_tls_module_exposes_tls_stat() -> None:
    r = uml_run(["cat", "/proc/net/tls_stat"], timeout=120)
    assert r.returncode == 0, r.stderr
    stats = parse_tls_stat(r.stdout)
    for name in TLS_STAT_COUNTERS:
        assert name in stats, r.stdout
    assert stats["TlsCurrTxSw"] == 0 and stats["TlsDecryptError"] == 0


def test_without_tls_module_there_is_no_tls_stat() -> None:
    r = uml_run("test ! -e /proc/net/tls_stat && ! grep -qw '^tls' /proc/modules; echo absent=$?",
                tls_module=False, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "absent=0" in r.stdout


def test_exit_code_stdout_stderr_and_env_come_back(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("from-host\n")
    r = uml_run('cat marker; echo "err:$FOO" >&2; echo "guest=$UML_GUEST"; exit 7',
                env={"FOO": "a b;c"}, cwd=tmp_path, tls_module=False, timeout=120)
    assert r.returncode == 7
    assert r.stdout.splitlines() == ["from-host", "guest=1"]
    assert r.stderr.strip() == "err:a b;c"


def test_timeout_kills_the_guest() -> None:
    r = uml_run(["sleep", "600"], tls_module=False, timeout=8)
    assert r.returncode == EXIT_TIMEOUT
    assert "timed out" in r.stderr


# One guest boot runs two `openssl s_server -WWW -sendfile` / `s_client` mTLS downloads of 1 MiB
# with `Options = KTLS` from an OPENSSL_CONF file (OpenSSL 3.0 has no -ktls switch), printing
# /proc/net/tls_stat around each. Ports are fixed: the guest has its own network stack.
KTLS_EXCHANGE = r"""
set -u
certs=$PWD
work=$(mktemp -d)
cat > "$work/ktls.cnf" <<'CNF'
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Options = KTLS
CNF
export OPENSSL_CONF=$work/ktls.cnf
head -c 1048576 /dev/urandom > "$work/data.bin"
run_case() {
  local name=$1; shift
  echo "=== $name before"; cat /proc/net/tls_stat
  (cd "$work" && exec openssl s_server -accept 127.0.0.1:4433 -naccept 1 -WWW -sendfile \
      -cert "$certs/server.crt" -key "$certs/server.key" -CAfile "$certs/ca.crt" -Verify 1 "$@" \
      > "$work/$name.server.log" 2>&1) &
  local server=$!
  for _ in $(seq 100); do ss -Htln | grep -q '127.0.0.1:4433' && break; sleep 0.1; done
  printf 'GET /data.bin HTTP/1.0\r\n\r\n' | timeout 120 openssl s_client -quiet -ign_eof \
      -connect 127.0.0.1:4433 -cert "$certs/client.crt" -key "$certs/client.key" \
      -CAfile "$certs/ca.crt" -verify_return_error "$@" > "$work/$name.out" 2> "$work/$name.client.log"
  echo "client_rc=$?"
  wait "$server"; echo "server_rc=$?"
  echo "=== $name after"; cat /proc/net/tls_stat
  if tail -c 1048576 "$work/$name.out" | cmp -s - "$work/data.bin"; then
    echo "payload=ok"
  else
    echo "payload=bad"; tail -n 5 "$work/$name.server.log" "$work/$name.client.log"
  fi
  grep -h 'Kernel TLS\|KTLS' "$work/$name.server.log" "$work/$name.client.log" || true
}
run_case tls13 -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256
run_case tls12 -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256
"""


def _section(text: str, header: str) -> str:
    m = re.search(rf"^=== {header}\n(.*?)(?=^=== |\Z)", text, re.S | re.M)
    assert m, f"no '=== {header}' in:\n{text}"
    return m.group(1)


def test_openssl_mtls_exchange_uses_ktls(mtls_certs: Path) -> None:
    script = mtls_certs / "ktls_exchange.sh"
    script.write_text(KTLS_EXCHANGE)
    r = uml_run(["bash", "ktls_exchange.sh"], cwd=mtls_certs, timeout=300)
    out = r.stdout
    assert r.returncode == 0, f"{out}\n{r.stderr}"
    assert out.count("client_rc=0") == 2 and out.count("server_rc=0") == 2, out
    assert out.count("payload=ok") == 2, out

    d13 = tls_stat_delta(parse_tls_stat(_section(out, "tls13 before")),
                         parse_tls_stat(_section(out, "tls13 after")))
    d12 = tls_stat_delta(parse_tls_stat(_section(out, "tls12 before")),
                         parse_tls_stat(_section(out, "tls12 after")))
    # TLS 1.3 on OpenSSL 3.0: both ends offload TX (server via SSL_sendfile); RX stays in userspace.
    assert d13["TlsTxSw"] >= 1, (d13, out)
    assert d13["TlsRxSw"] == 0, (d13, out)
    # TLS 1.2: TX and RX are both offloaded.
    assert d12["TlsTxSw"] >= 1 and d12["TlsRxSw"] >= 1, (d12, out)
    for d in (d13, d12):
        assert d["TlsDecryptError"] == 0, (d, out)

#pragma once
// The PROXY protocol version 2 header a server tunnel sends to its target before any byte of the
// peer's data (`proxy_protocol: v2`), so that the backend learns who connected: the peer's address
// and port, the tunnel's own address and port, the TLS facts of the connection, the SNI the peer
// sent, and the peer's SPIFFE ID. The format is HAProxy's proxy-protocol.txt, section 2.2; which
// TLV carries the SPIFFE ID, and why, is in docs/proxy-protocol.md.
//
// encode_v2() is a pure function of its input; any thread may call it.

#include <asio/ip/tcp.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace spiffe_tunnel::tunnel {

// Whether a tunnel's sessions announce the peer to the target.
enum class ProxyProtocol { kOff, kV2 };

// The registered TLV types used here (proxy-protocol.txt 2.2), and the SPIFFE ID's.
inline constexpr uint8_t kPp2TypeAuthority = 0x02;
inline constexpr uint8_t kPp2TypeCrc32c = 0x03;
inline constexpr uint8_t kPp2TypeSsl = 0x20;
inline constexpr uint8_t kPp2SubtypeSslVersion = 0x21;
inline constexpr uint8_t kPp2SubtypeSslCipher = 0x23;
// The peer's SPIFFE ID as a URI string: the type istio/ztunnel writes for the source identity and
// Istio's proxy and agentgateway read (see docs/proxy-protocol.md).
inline constexpr uint8_t kPp2TypeSpiffeId = 0xD0;
// pp2_tlv_ssl.client bits.
inline constexpr uint8_t kPp2ClientSsl = 0x01;
inline constexpr uint8_t kPp2ClientCertConn = 0x02;
inline constexpr uint8_t kPp2ClientCertSess = 0x04;

// The TLS facts of a connection whose client certificate was presented and verified (a tunnel
// sends nothing for any other: those never reach the target).
struct ProxyTls {
  std::string version;  // "TLSv1.3"
  std::string cipher;   // "TLS_AES_128_GCM_SHA256"
  // The session was resumed: the certificate was verified on the session (an earlier
  // connection), not on this connection (PP2_CLIENT_CERT_CONN unset).
  bool resumed = false;
};

struct ProxyHeader {
  // The accepted connection: the peer's end (source) and the tunnel's (destination). When either
  // is absent (not an IP socket) the header says AF_UNSPEC and carries no addresses; the TLVs
  // still follow. An IPv4-mapped IPv6 pair is sent as IPv4.
  std::optional<asio::ip::tcp::endpoint> source;
  std::optional<asio::ip::tcp::endpoint> destination;
  std::string authority;         // the SNI the peer sent; "" sends no PP2_TYPE_AUTHORITY
  std::optional<ProxyTls> tls;   // PP2_TYPE_SSL with verify = 0 and both certificate flags
  std::string spiffe_id;         // "" sends no kPp2TypeSpiffeId
  bool crc32c = true;            // append PP2_TYPE_CRC32C over the whole header
};

// The header's bytes: signature, version 2 + PROXY, family + STREAM, length, addresses, TLVs.
// The values must fit the 16-bit length (a SPIFFE ID is at most 2048 bytes, an SNI 255).
std::vector<uint8_t> encode_v2(const ProxyHeader& header);

// CRC-32C (Castagnoli, RFC 4960 appendix B) of `bytes`.
uint32_t crc32c(std::span<const uint8_t> bytes);

}  // namespace spiffe_tunnel::tunnel

#include "spiffe_tunnel/tunnel/proxy_protocol.h"

#include <cstdint>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

using namespace spiffe_tunnel::tunnel;
using Endpoint = asio::ip::tcp::endpoint;
using Bytes = std::vector<uint8_t>;

// The expected headers below are written out from proxy-protocol.txt section 2.2 by hand; only
// the ASCII of string values is appended with text().
namespace {

Bytes& operator<<(Bytes& out, std::initializer_list<uint8_t> bytes) {
  out.insert(out.end(), bytes);
  return out;
}

Bytes& operator<<(Bytes& out, std::string_view text) {
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

Endpoint ep(const char* ip, uint16_t port) { return {asio::ip::make_address(ip), port}; }

const Bytes kSignature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

uint16_t be16(const Bytes& b, size_t at) { return static_cast<uint16_t>(b[at] << 8 | b[at + 1]); }

struct Tlv {
  uint8_t type;
  Bytes value;
};

// Splits a TLV list, requiring the lengths to add up exactly.
std::vector<Tlv> split(const Bytes& b, size_t from, size_t to) {
  std::vector<Tlv> out;
  while (from < to) {
    REQUIRE(to - from >= 3);
    const size_t len = be16(b, from + 1);
    REQUIRE(from + 3 + len <= to);
    out.push_back({b[from], Bytes(b.begin() + from + 3, b.begin() + from + 3 + len)});
    from += 3 + len;
  }
  REQUIRE(from == to);
  return out;
}

}  // namespace

TEST_CASE("an IPv4 connection encodes byte for byte as the specification lays it out") {
  ProxyHeader h;
  h.source = ep("192.0.2.10", 51234);
  h.destination = ep("198.51.100.7", 8443);
  h.authority = "db.example";
  h.tls = ProxyTls{"TLSv1.3", "TLS_AES_128_GCM_SHA256"};
  h.spiffe_id = "spiffe://a.test/client";
  h.crc32c = false;

  Bytes want = kSignature;
  // version 2 | PROXY, AF_INET | STREAM, length 12 + 13 + 43 + 25 = 93
  want << std::initializer_list<uint8_t>{0x21, 0x11, 0x00, 0x5D};
  want << std::initializer_list<uint8_t>{192, 0, 2, 10, 198, 51, 100, 7, 0xC8, 0x22, 0x20, 0xFB};
  // PP2_TYPE_AUTHORITY, 10 bytes
  (want << std::initializer_list<uint8_t>{0x02, 0x00, 0x0A}) << "db.example";
  // PP2_TYPE_SSL, 40 bytes: client = SSL | CERT_CONN | CERT_SESS, verify = 0, then the sub-TLVs
  want << std::initializer_list<uint8_t>{0x20, 0x00, 0x28, 0x07, 0x00, 0x00, 0x00, 0x00};
  (want << std::initializer_list<uint8_t>{0x21, 0x00, 0x07}) << "TLSv1.3";
  (want << std::initializer_list<uint8_t>{0x23, 0x00, 0x16}) << "TLS_AES_128_GCM_SHA256";
  // the SPIFFE ID, 22 bytes
  (want << std::initializer_list<uint8_t>{0xD0, 0x00, 0x16}) << "spiffe://a.test/client";

  const Bytes got = encode_v2(h);
  CHECK(got.size() == 16 + 93);
  CHECK(got == want);
}

TEST_CASE("an IPv6 connection encodes byte for byte with 16-byte addresses") {
  ProxyHeader h;
  h.source = ep("2001:db8::1", 40000);
  h.destination = ep("2001:db8::2", 8443);
  h.tls = ProxyTls{"TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"};
  h.spiffe_id = "spiffe://b.test/x";
  h.crc32c = false;

  Bytes want = kSignature;
  // AF_INET6 | STREAM, length 36 + 50 + 20 = 106; no SNI, so no PP2_TYPE_AUTHORITY
  want << std::initializer_list<uint8_t>{0x21, 0x21, 0x00, 0x6A};
  want << std::initializer_list<uint8_t>{0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0,
                                         0,    0,    0,    0,    0, 0, 0, 1};
  want << std::initializer_list<uint8_t>{0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0,
                                         0,    0,    0,    0,    0, 0, 0, 2};
  want << std::initializer_list<uint8_t>{0x9C, 0x40, 0x20, 0xFB};
  // PP2_TYPE_SSL, 5 + 10 + 32 = 47 bytes
  want << std::initializer_list<uint8_t>{0x20, 0x00, 0x2F, 0x07, 0x00, 0x00, 0x00, 0x00};
  (want << std::initializer_list<uint8_t>{0x21, 0x00, 0x07}) << "TLSv1.2";
  (want << std::initializer_list<uint8_t>{0x23, 0x00, 0x1D}) << "ECDHE-ECDSA-AES128-GCM-SHA256";
  (want << std::initializer_list<uint8_t>{0xD0, 0x00, 0x11}) << "spiffe://b.test/x";

  CHECK(encode_v2(h) == want);
}

TEST_CASE("CRC-32C matches the standard check value") {
  const std::string_view check = "123456789";
  CHECK(crc32c(std::span(reinterpret_cast<const uint8_t*>(check.data()), check.size())) ==
        0xE3069283U);
  CHECK(crc32c({}) == 0U);
}

TEST_CASE("the CRC32C TLV covers the whole header with its own field zeroed") {
  ProxyHeader h;
  h.source = ep("127.0.0.1", 40001);
  h.destination = ep("127.0.0.1", 7000);
  h.tls = ProxyTls{"TLSv1.3", "TLS_AES_256_GCM_SHA384"};
  h.spiffe_id = "spiffe://a.test/client";
  const Bytes got = encode_v2(h);

  REQUIRE(be16(got, 14) == got.size() - 16);
  const auto tlvs = split(got, 16 + 12, got.size());
  REQUIRE(tlvs.size() == 3);
  CHECK(tlvs[2].type == kPp2TypeCrc32c);
  REQUIRE(tlvs[2].value.size() == 4);
  const uint32_t sent = static_cast<uint32_t>(tlvs[2].value[0]) << 24 | tlvs[2].value[1] << 16 |
                        tlvs[2].value[2] << 8 | tlvs[2].value[3];
  Bytes zeroed = got;
  std::fill(zeroed.end() - 4, zeroed.end(), 0);
  CHECK(sent == crc32c(zeroed));
  CHECK(sent != 0U);
}

TEST_CASE("the SSL TLV nests its sub-TLVs inside its own length") {
  ProxyHeader h;
  h.source = ep("127.0.0.1", 1);
  h.destination = ep("127.0.0.1", 2);
  h.authority = "sni.test";
  h.tls = ProxyTls{"TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"};
  h.spiffe_id = "spiffe://a.test/" + std::string(2000, 'p');  // near the longest SPIFFE ID
  h.crc32c = false;
  const Bytes got = encode_v2(h);

  REQUIRE(be16(got, 14) == got.size() - 16);
  const auto top = split(got, 16 + 12, got.size());
  REQUIRE(top.size() == 3);
  CHECK(top[0].type == kPp2TypeAuthority);
  CHECK(top[0].value == Bytes{'s', 'n', 'i', '.', 't', 'e', 's', 't'});
  REQUIRE(top[1].type == kPp2TypeSsl);
  const Bytes& ssl = top[1].value;
  CHECK(ssl[0] == (kPp2ClientSsl | kPp2ClientCertConn | kPp2ClientCertSess));
  CHECK(Bytes(ssl.begin() + 1, ssl.begin() + 5) == Bytes{0, 0, 0, 0});
  const auto sub = split(ssl, 5, ssl.size());
  REQUIRE(sub.size() == 2);
  CHECK(sub[0].type == kPp2SubtypeSslVersion);
  CHECK(sub[1].type == kPp2SubtypeSslCipher);
  CHECK(sub[1].value.size() == std::string_view("TLS_CHACHA20_POLY1305_SHA256").size());
  CHECK(top[2].type == kPp2TypeSpiffeId);
  CHECK(top[2].value.size() == 2016);

  // A resumed session: the certificate was presented on the session, not on this connection.
  h.tls->resumed = true;
  const Bytes resumed = encode_v2(h);
  const auto again = split(resumed, 16 + 12, resumed.size());
  REQUIRE(again.size() == 3);
  CHECK(again[1].value[0] == (kPp2ClientSsl | kPp2ClientCertSess));
}

TEST_CASE("IPv4-mapped IPv6 ends are sent as IPv4, a mixed pair as IPv6") {
  ProxyHeader h;
  h.crc32c = false;
  h.source = ep("::ffff:10.1.2.3", 5000);
  h.destination = ep("::ffff:10.1.2.4", 6000);
  Bytes mapped = encode_v2(h);
  REQUIRE(mapped.size() == 16 + 12);
  CHECK(mapped[13] == 0x11);
  CHECK(Bytes(mapped.begin() + 16, mapped.begin() + 24) == Bytes{10, 1, 2, 3, 10, 1, 2, 4});

  h.destination = ep("2001:db8::9", 6000);
  Bytes mixed = encode_v2(h);
  REQUIRE(mixed.size() == 16 + 36);
  CHECK(mixed[13] == 0x21);
  CHECK(Bytes(mixed.begin() + 16, mixed.begin() + 32) ==
        Bytes{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 1, 2, 3});
}

TEST_CASE("a connection without IP ends says AF_UNSPEC and still carries its TLVs") {
  ProxyHeader h;
  h.spiffe_id = "spiffe://a.test/client";
  h.crc32c = false;
  Bytes want = kSignature;
  want << std::initializer_list<uint8_t>{0x21, 0x00, 0x00, 0x19};
  (want << std::initializer_list<uint8_t>{0xD0, 0x00, 0x16}) << "spiffe://a.test/client";
  CHECK(encode_v2(h) == want);
}

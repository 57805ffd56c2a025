#include "spiffe_tunnel/tunnel/proxy_protocol.h"

#include <array>
#include <cassert>
#include <cstddef>

namespace spiffe_tunnel::tunnel {
namespace {

// proxy-protocol.txt 2.2: the 12-byte signature, then version 2 (high nibble) and a command.
constexpr std::array<uint8_t, 12> kSignature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr uint8_t kVersion2Proxy = 0x21;
constexpr uint8_t kUnspec = 0x00;       // AF_UNSPEC, UNSPEC: no address block
constexpr uint8_t kTcpOverIpv4 = 0x11;  // AF_INET, STREAM: 4 + 4 + 2 + 2 bytes
constexpr uint8_t kTcpOverIpv6 = 0x21;  // AF_INET6, STREAM: 16 + 16 + 2 + 2 bytes
constexpr std::size_t kFixedPart = 16;  // signature, version/command, family, length

void put16(std::vector<uint8_t>& out, std::size_t v) {
  assert(v <= 0xFFFF);
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v & 0xFF));
}

void put_bytes(std::vector<uint8_t>& out, const auto& bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

void put_tlv(std::vector<uint8_t>& out, uint8_t type, std::span<const uint8_t> value) {
  out.push_back(type);
  put16(out, value.size());
  put_bytes(out, value);
}

void put_tlv(std::vector<uint8_t>& out, uint8_t type, const std::string& value) {
  put_tlv(out, type,
          std::span(reinterpret_cast<const uint8_t*>(value.data()), value.size()));
}

// Both ends as IPv4 when both are (or are IPv4-mapped), else both as IPv6.
void put_addresses(std::vector<uint8_t>& out, const asio::ip::tcp::endpoint& src,
                   const asio::ip::tcp::endpoint& dst) {
  const auto v4 = [](const asio::ip::address& a) {
    return a.is_v4() || a.to_v6().is_v4_mapped();
  };
  const auto as_v4 = [](const asio::ip::address& a) {
    return a.is_v4() ? a.to_v4() : asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  };
  const auto as_v6 = [](const asio::ip::address& a) {
    return a.is_v6() ? a.to_v6() : asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4());
  };
  if (v4(src.address()) && v4(dst.address())) {
    out.push_back(kTcpOverIpv4);
    put16(out, 0);  // the length, filled in by encode_v2
    put_bytes(out, as_v4(src.address()).to_bytes());
    put_bytes(out, as_v4(dst.address()).to_bytes());
  } else {
    out.push_back(kTcpOverIpv6);
    put16(out, 0);
    put_bytes(out, as_v6(src.address()).to_bytes());
    put_bytes(out, as_v6(dst.address()).to_bytes());
  }
  put16(out, src.port());
  put16(out, dst.port());
}

// pp2_tlv_ssl: client flags, verify (0: a certificate was presented and verified), sub-TLVs.
void put_ssl(std::vector<uint8_t>& out, const ProxyTls& tls) {
  std::vector<uint8_t> value;
  value.push_back(kPp2ClientSsl | (tls.resumed ? 0 : kPp2ClientCertConn) | kPp2ClientCertSess);
  put_bytes(value, std::array<uint8_t, 4>{0, 0, 0, 0});
  put_tlv(value, kPp2SubtypeSslVersion, tls.version);
  if (!tls.cipher.empty()) {
    put_tlv(value, kPp2SubtypeSslCipher, tls.cipher);
  }
  put_tlv(out, kPp2TypeSsl, value);
}

}  // namespace

std::vector<uint8_t> encode_v2(const ProxyHeader& h) {
  std::vector<uint8_t> out;
  out.reserve(256);
  put_bytes(out, kSignature);
  out.push_back(kVersion2Proxy);
  if (h.source && h.destination) {
    put_addresses(out, *h.source, *h.destination);
  } else {
    // proxy-protocol.txt: a sender uses UNSPEC for a family it cannot express, and the receiver
    // keeps the real endpoints. PROXY rather than LOCAL, so that the TLVs still count.
    out.push_back(kUnspec);
    put16(out, 0);
  }
  if (!h.authority.empty()) {
    put_tlv(out, kPp2TypeAuthority, h.authority);
  }
  if (h.tls) {
    put_ssl(out, *h.tls);
  }
  if (!h.spiffe_id.empty()) {
    put_tlv(out, kPp2TypeSpiffeId, h.spiffe_id);
  }
  std::size_t crc_at = 0;
  if (h.crc32c) {
    crc_at = out.size() + 3;
    put_tlv(out, kPp2TypeCrc32c, std::array<uint8_t, 4>{0, 0, 0, 0});
  }
  const std::size_t length = out.size() - kFixedPart;
  assert(length <= 0xFFFF);
  out[14] = static_cast<uint8_t>(length >> 8);
  out[15] = static_cast<uint8_t>(length & 0xFF);
  if (h.crc32c) {
    // 2.2.3: computed over the whole header with the checksum field zero, stored big-endian.
    const uint32_t crc = crc32c(out);
    for (int i = 0; i < 4; ++i) {
      out[crc_at + i] = static_cast<uint8_t>(crc >> (24 - 8 * i));
    }
  }
  return out;
}

uint32_t crc32c(std::span<const uint8_t> bytes) {
  // Bitwise, reflected polynomial 0x82F63B78: a header is a few hundred bytes once per session.
  uint32_t crc = 0xFFFFFFFF;
  for (const uint8_t b : bytes) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) {
      crc = (crc >> 1) ^ (0x82F63B78U & (0U - (crc & 1U)));
    }
  }
  return ~crc;
}

}  // namespace spiffe_tunnel::tunnel

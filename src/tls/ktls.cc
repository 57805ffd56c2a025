#include "spiffe_tunnel/tls/ktls.h"

#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "spiffe_tunnel/base/unique_fd.h"
#include "spiffe_tunnel/tls/record_cipher.h"
#include "spiffe_tunnel/tls/records.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

namespace spiffe_tunnel::tls::ktls {
namespace {

std::string errno_text(int e) { return std::strerror(e); }

// Everything the kernel needs for one cipher, filled from the traffic secret.
template <typename Info>
base::Status fill(Info& info, uint16_t cipher_type, const char* digest,
                  std::span<const unsigned char> secret, size_t salt_size, uint64_t first_seq) {
  std::memset(&info, 0, sizeof(info));
  info.info.version = TLS_1_3_VERSION;
  info.info.cipher_type = cipher_type;
  std::array<unsigned char, 12> iv{};
  auto st = tls::hkdf_expand_label(digest, secret, "key", info.key, sizeof(info.key));
  if (st) {
    st = tls::hkdf_expand_label(digest, secret, "iv", iv.data(), iv.size());
  }
  if (!st) {
    return st;
  }
  // The 12-byte TLS 1.3 nonce base is split into the kernel's salt (implicit part) and iv.
  std::memcpy(info.salt, iv.data(), salt_size);
  std::memcpy(info.iv, iv.data() + salt_size, sizeof(info.iv));
  OPENSSL_cleanse(iv.data(), iv.size());
  for (std::size_t i = 0; i < sizeof(info.rec_seq); ++i) {  // big-endian
    info.rec_seq[sizeof(info.rec_seq) - 1 - i] = static_cast<unsigned char>(first_seq >> (8 * i));
  }
  return {};
}

template <typename Info>
base::Status set_rx(int fd, Info& info) {
  const int rc = ::setsockopt(fd, SOL_TLS, TLS_RX, &info, sizeof(info));
  const int e = errno;
  OPENSSL_cleanse(&info, sizeof(info));
  if (rc != 0) {
    return base::make_error("setsockopt(TLS_RX): " + errno_text(e));
  }
  return {};
}

}  // namespace

base::Status probe_kernel_tls() {
  base::UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener.get(), 1) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return base::make_error("cannot open a loopback socket to probe kernel TLS: " +
                            errno_text(errno));
  }
  base::UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return base::make_error("cannot connect a loopback socket to probe kernel TLS: " +
                            errno_text(errno));
  }
  base::UniqueFd server(::accept(listener.get(), nullptr, nullptr));
  // The ULP can only be attached to an established socket.
  if (::setsockopt(client.get(), SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
    const int e = errno;
    return base::make_error("the kernel refuses TCP_ULP \"tls\" (" + errno_text(e) +
                            "); load the tls module (modprobe tls) or use ktls: auto/off");
  }
  return {};
}

base::Status install_tls13_rx(int fd, const std::string& cipher_name,
                              std::span<const unsigned char> secret, uint64_t first_seq) {
  // The ULP may already be attached (OpenSSL did it for TX); EEXIST is fine.
  if (::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0 && errno != EEXIST) {
    return base::make_error("TCP_ULP tls: " + errno_text(errno));
  }
  if (cipher_name == "TLS_AES_128_GCM_SHA256") {
    tls12_crypto_info_aes_gcm_128 info;
    auto st = fill(info, TLS_CIPHER_AES_GCM_128, "SHA256", secret, TLS_CIPHER_AES_GCM_128_SALT_SIZE,
                   first_seq);
    return st ? set_rx(fd, info) : st;
  }
  if (cipher_name == "TLS_AES_256_GCM_SHA384") {
    tls12_crypto_info_aes_gcm_256 info;
    auto st = fill(info, TLS_CIPHER_AES_GCM_256, "SHA384", secret, TLS_CIPHER_AES_GCM_256_SALT_SIZE,
                   first_seq);
    return st ? set_rx(fd, info) : st;
  }
  if (cipher_name == "TLS_CHACHA20_POLY1305_SHA256") {
    tls12_crypto_info_chacha20_poly1305 info;
    // ChaCha20-Poly1305 takes the whole 12-byte nonce base as iv and no salt.
    auto st = fill(info, TLS_CIPHER_CHACHA20_POLY1305, "SHA256", secret, 0, first_seq);
    return st ? set_rx(fd, info) : st;
  }
  return base::make_error("cipher " + cipher_name + " has no kernel TLS receive offload");
}

int read_record(int fd, std::span<char> buf, Record& out) {
  char control[CMSG_SPACE(sizeof(unsigned char))];
  iovec iov{buf.data(), buf.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  if (n < 0) {
    return -1;
  }
  if (n == 0 && msg.msg_controllen == 0) {
    return 0;
  }
  out.type = tls::kApplicationData;
  out.size = static_cast<std::size_t>(n);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE) {
      out.type = *reinterpret_cast<unsigned char*>(CMSG_DATA(c));
    }
  }
  return 1;
}

ssize_t send_record(int fd, uint8_t type, std::span<const char> data) {
  char control[CMSG_SPACE(sizeof(unsigned char))] = {};
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_TLS;
  c->cmsg_type = TLS_SET_RECORD_TYPE;
  c->cmsg_len = CMSG_LEN(sizeof(unsigned char));
  *reinterpret_cast<unsigned char*>(CMSG_DATA(c)) = type;
  return ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

base::Result<KeyState> key_state(int fd, bool transmit) {
  const int which = transmit ? TLS_TX : TLS_RX;
  const auto failed = [transmit](int e) {
    return base::make_error(std::string("getsockopt(") + (transmit ? "TLS_TX" : "TLS_RX") +
                            "): " + errno_text(e));
  };
  // The kernel wants the exact size of its cipher's crypto_info (anything else is EINVAL), so
  // the cipher comes first: the bare tls_crypto_info header.
  tls_crypto_info header{};
  socklen_t len = sizeof(header);
  if (::getsockopt(fd, SOL_TLS, which, &header, &len) != 0) {
    return failed(errno);
  }
  KeyState state;
  // The record sequence number of the cipher's crypto_info; the key and IV that come with it are
  // wiped at once.
  const auto read_seq = [&](auto info) -> base::Status {
    len = sizeof(info);
    const int rc = ::getsockopt(fd, SOL_TLS, which, &info, &len);
    const int e = errno;
    for (const unsigned char b : info.rec_seq) {
      state.records = state.records << 8 | b;  // big-endian, as on the wire
    }
    OPENSSL_cleanse(&info, sizeof(info));
    return rc == 0 ? base::Status{} : base::Status(failed(e));
  };
  base::Status st;
  switch (header.cipher_type) {
    case TLS_CIPHER_AES_GCM_128:
      state.aes_gcm = true;
      st = read_seq(tls12_crypto_info_aes_gcm_128{});
      break;
    case TLS_CIPHER_AES_GCM_256:
      state.aes_gcm = true;
      st = read_seq(tls12_crypto_info_aes_gcm_256{});
      break;
    default:
      return state;  // ChaCha20-Poly1305 (and others): no practical limit, nothing to count
  }
  if (!st) {
    return st.error();
  }
  return state;
}

}  // namespace spiffe_tunnel::tls::ktls

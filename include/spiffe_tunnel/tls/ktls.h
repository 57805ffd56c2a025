#pragma once
// Linux kernel TLS (kTLS), the parts OpenSSL 3.0 does not do for us. All Linux specifics of the
// data path live here.
//
// OpenSSL 3.0 offloads TX for TLS 1.2 and 1.3 and RX for TLS 1.2 by itself (SSL_OP_ENABLE_KTLS),
// but never TLS 1.3 RX. install_tls13_rx() does that: it derives the peer's application traffic
// key and IV from the traffic secret (RFC 8446 §7.3) and hands them to the socket with
// setsockopt(SOL_TLS, TLS_RX). From then on the kernel decrypts and OpenSSL must never read
// from that socket again; read_record() reads plaintext records, with their type, instead.
// Once both directions are in the kernel the SSL object is not needed at all: data goes out with
// send(), the closing alert with send_record().

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/result.h"

namespace spiffe_tunnel::tls::ktls {

// True when this kernel accepts the "tls" upper-layer protocol on a TCP socket (the tls module
// is built in or loadable). Probed once on a loopback connection.
base::Status probe_kernel_tls();

// Installs TLS 1.3 receive offload on `fd`. `cipher_name` is OpenSSL's standard name
// (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256); `secret` is the
// peer's application traffic secret 0. The record sequence starts at 0, so nothing may have been
// read with the application keys before. Fails (leaving the socket in userspace mode) when the
// kernel or cipher does not allow it.
// `first_seq` is the sequence number of the first record the kernel will read (records OpenSSL
// read under the same key before, e.g. a NewSessionTicket).
base::Status install_tls13_rx(int fd, const std::string& cipher_name,
                              std::span<const unsigned char> secret, uint64_t first_seq = 0);

struct Record {
  uint8_t type = 0;
  std::size_t size = 0;  // plaintext bytes placed in the buffer
};

// Reads the next record (or part of a data record) from a kTLS RX socket with recvmsg and a
// TLS_GET_RECORD_TYPE control message. Returns -1 with errno set on error (EAGAIN when nothing is
// ready), 0 at TCP end of stream, 1 with `out` filled otherwise.
int read_record(int fd, std::span<char> buf, Record& out);

// Sends one non-data record (an alert, say) on a kTLS TX socket with sendmsg and a
// TLS_SET_RECORD_TYPE control message; the kernel encrypts it as a record of that type. Returns
// the bytes sent, or -1 with errno set (EAGAIN when the socket buffer is full).
ssize_t send_record(int fd, uint8_t type, std::span<const char> data);

// One offloaded direction as the kernel reports it.
struct KeyState {
  bool aes_gcm = false;  // AES-128-GCM or AES-256-GCM (the ciphers with a practical AEAD limit)
  uint64_t records = 0;  // the record sequence number (AES-GCM only; 0 for other ciphers)
};
// Reads the state of the transmit (`transmit`) or receive direction of `fd` with
// getsockopt(SOL_TLS, TLS_TX / TLS_RX). The key material that call returns along with the
// sequence number is wiped at once. Fails when the direction is not offloaded, or for a cipher
// this build does not know.
base::Result<KeyState> key_state(int fd, bool transmit);

}  // namespace spiffe_tunnel::tls::ktls

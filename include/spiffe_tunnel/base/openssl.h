#pragma once
// Owning wrappers for OpenSSL objects, and helpers to turn OpenSSL's error queue into text.
// Every wrapper frees with the matching OpenSSL *_free; `up_ref` variants share ownership of a
// reference-counted object (X509, EVP_PKEY, X509_STORE, SSL_CTX).

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <vector>

namespace spiffe_tunnel::base {

template <auto Fn>
struct OpenSslDeleter {
  template <typename T>
  void operator()(T* p) const {
    Fn(p);
  }
};

using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpenSslDeleter<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpenSslDeleter<X509_STORE_CTX_free>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, OpenSslDeleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, OpenSslDeleter<SSL_free>>;
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO_free_all>>;
using X509NamePtr = std::unique_ptr<X509_NAME, OpenSslDeleter<X509_NAME_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, OpenSslDeleter<GENERAL_NAMES_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, OpenSslDeleter<ASN1_INTEGER_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OpenSslDeleter<EVP_PKEY_CTX_free>>;

// Stack of X509 that owns its elements.
struct X509StackDeleter {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using X509StackPtr = std::unique_ptr<STACK_OF(X509), X509StackDeleter>;

// Returns a new owning reference to `cert` (X509_up_ref).
X509Ptr share(X509* cert);
// Returns a new owning reference to `key` (EVP_PKEY_up_ref).
EvpPkeyPtr share(EVP_PKEY* key);

// Drains OpenSSL's thread-local error queue into one line ("" if empty).
std::string drain_openssl_errors();

// Returns "subject CN or serial" style short description of a certificate, for logs.
std::string describe_certificate(const X509* cert);

// Hex serial number of a certificate, for logs and tests.
std::string serial_hex(const X509* cert);

}  // namespace spiffe_tunnel::base

// hsfloor: what one mutual TLS 1.3 handshake costs in OpenSSL alone, both ends in one thread.
//
//   hsfloor SERVER_CERT SERVER_KEY CA_FOR_SERVER CLIENT_CERT CLIENT_KEY CA_FOR_CLIENT SECONDS
//
// Client and server SSL objects talk through an in-memory BIO pair: no sockets, no event loop, no
// threads, no policy code. Each side verifies the other's chain against the other trust domain's
// CA with OpenSSL's own verification, TLS 1.3 with TLS_AES_128_GCM_SHA256 and no tickets -- the
// settings every tunnel in the benchmark uses. Prints "handshakes=N cpu_ms=X" with X the process
// CPU time per handshake (both ends together): the floor under the CPU per connection of any
// tunnel pair built on this OpenSSL.

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static SSL_CTX* make_ctx(int server, const char* cert, const char* key, const char* ca) {
  SSL_CTX* c = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!c || SSL_CTX_use_certificate_chain_file(c, cert) != 1 ||
      SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_load_verify_locations(c, ca, NULL) != 1 ||
      SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256") != 1) {
    ERR_print_errors_fp(stderr);
    exit(1);
  }
  SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(c, 0);
  return c;
}

static int one_handshake(SSL_CTX* sc, SSL_CTX* cc) {
  SSL* s = SSL_new(sc);
  SSL* c = SSL_new(cc);
  BIO *bs, *bc;
  BIO_new_bio_pair(&bs, 0, &bc, 0);
  SSL_set_bio(s, bs, bs);
  SSL_set_bio(c, bc, bc);
  SSL_set_accept_state(s);
  SSL_set_connect_state(c);
  int sdone = 0, cdone = 0;
  for (int round = 0; round < 100 && !(sdone && cdone); ++round) {
    if (!cdone) {
      int r = SSL_do_handshake(c);
      if (r == 1) cdone = 1;
      else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ) break;
    }
    if (!sdone) {
      int r = SSL_do_handshake(s);
      if (r == 1) sdone = 1;
      else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ) break;
    }
  }
  const int ok = sdone && cdone && SSL_get_verify_result(s) == X509_V_OK &&
                 SSL_get_verify_result(c) == X509_V_OK;
  SSL_free(s);
  SSL_free(c);
  return ok;
}

int main(int argc, char** argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: hsfloor SERVER_CERT SERVER_KEY CA_FOR_SERVER CLIENT_CERT CLIENT_KEY "
                    "CA_FOR_CLIENT SECONDS\n");
    return 2;
  }
  SSL_CTX* sc = make_ctx(1, argv[1], argv[2], argv[3]);
  SSL_CTX* cc = make_ctx(0, argv[4], argv[5], argv[6]);
  const double secs = atof(argv[7]);
  for (int i = 0; i < 20; ++i) {  // warm-up: provider caches, lazily loaded tables
    if (!one_handshake(sc, cc)) {
      fprintf(stderr, "hsfloor: handshake failed\n");
      ERR_print_errors_fp(stderr);
      return 1;
    }
  }
  long n = 0;
  const double t0 = cpu_s();
  double t = t0;
  while (t - t0 < secs) {
    if (!one_handshake(sc, cc)) {
      fprintf(stderr, "hsfloor: handshake failed\n");
      return 1;
    }
    ++n;
    if (n % 16 == 0) t = cpu_s();
  }
  t = cpu_s();
  printf("handshakes=%ld cpu_ms=%.4f\n", n, (t - t0) * 1000.0 / n);
  SSL_CTX_free(sc);
  SSL_CTX_free(cc);
  return 0;
}

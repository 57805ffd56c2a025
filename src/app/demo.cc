#include "demo.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <openssl/crypto.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>
#include <vector>

#include "spiffe_tunnel/base/unique_fd.h"
#include "spiffe_tunnel/spiffe/issuer.h"

extern char** environ;

namespace spiffe_tunnel::app {
namespace {

using base::UniqueFd;

uint16_t free_port() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

UniqueFd connect_to(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    return UniqueFd();
  }
  return fd;
}

// Waits for the daemon writing `log` to report its listener (a probe connection would show up
// in the demo's logs as a refused peer).
bool wait_for_listening(const std::string& log) {
  for (int i = 0; i < 100; ++i) {
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) {
      if (line.find("listening on") != std::string::npos) {
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// Echo service on 127.0.0.1:port, one thread per connection, for the demo only.
void serve_echo(int listen_fd) {
  for (;;) {
    int c = ::accept(listen_fd, nullptr, nullptr);
    if (c < 0) {
      return;
    }
    std::thread([c] {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(c, buf, sizeof(buf))) > 0) {
        if (::write(c, buf, n) != n) {
          break;
        }
      }
      ::close(c);
    }).detach();
  }
}

std::string exchange(uint16_t port, const std::string& message) {
  UniqueFd fd = connect_to(port);
  if (!fd.valid()) {
    return "";
  }
  timeval tv{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::write(fd.get(), message.data(), message.size()) != static_cast<ssize_t>(message.size())) {
    return "";
  }
  ::shutdown(fd.get(), SHUT_WR);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof(buf))) > 0) {
    out.append(buf, n);
  }
  return out;
}

// Creates `path` afresh with `mode` from the first byte: a key is never readable by others, not
// even between a create and a chmod. Any file (or symlink) of that name is removed first, and
// O_EXCL refuses one that reappears.
bool write_file(const std::string& path, const std::string& data, mode_t mode = 0644) {
  ::unlink(path.c_str());
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd.valid()) {
    return false;
  }
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n <= 0) {
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  return true;
}

bool write_key_file(const std::string& path, EVP_PKEY* key) {
  std::string pem = spiffe::private_key_to_pem(key);
  const bool ok = write_file(path, pem, 0600);
  OPENSSL_cleanse(pem.data(), pem.size());
  return ok;
}

struct Site {
  std::string dir;
  std::string cert, key, bundle;
};

bool mint_site(const std::string& dir, const spiffe::Issuer& ca, const std::string& id,
               Site& site) {
  auto svid = ca.issue_svid(*spiffe::SpiffeId::parse(id));
  if (!svid) {
    std::cerr << "demo: " << svid.error().message << "\n";
    return false;
  }
  std::string chain;
  for (const auto& c : svid->chain) {
    chain += spiffe::certificate_to_pem(c.get());
  }
  site.dir = dir;
  site.cert = dir + "/svid.pem";
  site.key = dir + "/svid.key";
  site.bundle = dir + "/bundle.pem";
  ::mkdir(dir.c_str(), 0700);
  return write_file(site.cert, chain) &&
         write_key_file(site.key, svid->key.get()) &&
         write_file(site.bundle, spiffe::certificate_to_pem(ca.certificate()));
}

pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  for (const auto& a : args) {
    argv.push_back(const_cast<char*>(a.c_str()));
  }
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  if (posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ) != 0) {
    pid = -1;
  }
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

std::string join(const std::vector<std::string>& args) {
  std::string out;
  for (size_t i = 0; i < args.size(); ++i) {
    out += (i == 0 ? "spiffe-tunnel" : " " + args[i]);
  }
  return out;
}

// The demo's directory: `wanted`, or a fresh temporary one under $TMPDIR (default /tmp), so the
// demo also runs where only a tmpfs is writable. "" when it cannot be made.
std::string demo_dir(const std::string& wanted) {
  if (!wanted.empty()) {
    ::mkdir(wanted.c_str(), 0700);
    return wanted;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                     "/spiffe-tunnel-demo-XXXXXX";
  return ::mkdtemp(tmpl.data()) != nullptr ? tmpl : "";
}

// Three trust domains, each with its own CA and one SVID: A (a producer), B (the Kafka side)
// and a stranger that neither side trusts.
struct Sites {
  Site a, b, x;
};

bool mint_sites(const std::string& dir, Sites& s) {
  auto ca_a = spiffe::Issuer::create_root(*spiffe::TrustDomain::parse("site-a.demo"));
  auto ca_b = spiffe::Issuer::create_root(*spiffe::TrustDomain::parse("site-b.demo"));
  auto ca_x = spiffe::Issuer::create_root(*spiffe::TrustDomain::parse("stranger.demo"));
  if (!ca_a || !ca_b || !ca_x) {
    std::cerr << "demo: cannot create demo CAs\n";
    return false;
  }
  if (!mint_site(dir + "/site-a", *ca_a, "spiffe://site-a.demo/producer", s.a) ||
      !mint_site(dir + "/site-b", *ca_b, "spiffe://site-b.demo/kafka", s.b) ||
      !mint_site(dir + "/stranger", *ca_x, "spiffe://stranger.demo/intruder", s.x)) {
    std::cerr << "demo: cannot write certificates to " << dir << "\n";
    return false;
  }
  return true;
}

// An echo service on a free loopback port, served by a detached thread; 0 when it cannot start.
uint16_t start_echo() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM, 0));
  const uint16_t port = free_port();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd.get(), 64) != 0) {
    return 0;
  }
  std::thread(serve_echo, fd.release()).detach();
  return port;
}

// The three daemons of the demo: site B's server tunnel in front of the echo service, site A's
// client tunnel to it, and the stranger's client tunnel to it.
struct Tunnels {
  uint16_t client_port = free_port();
  uint16_t stranger_port = free_port();
  std::vector<std::string> server, client, stranger;
  std::vector<pid_t> pids;

  Tunnels(const Sites& s, uint16_t echo_port) {
    const std::string p = std::to_string(free_port());
    server = {"spiffe-tunnel", "server", "--listen", "127.0.0.1:" + p,
              "--target", "127.0.0.1:" + std::to_string(echo_port),
              "--cert", s.b.cert, "--key", s.b.key,
              "--bundle", "site-a.demo=" + s.a.bundle, "--bundle", "site-b.demo=" + s.b.bundle,
              "--allow-id", "spiffe://site-a.demo/producer"};
    client = {"spiffe-tunnel", "client", "--listen", "127.0.0.1:" + std::to_string(client_port),
              "--target", "127.0.0.1:" + p, "--cert", s.a.cert, "--key", s.a.key,
              "--bundle", "site-a.demo=" + s.a.bundle, "--bundle", "site-b.demo=" + s.b.bundle,
              "--expect-id", "spiffe://site-b.demo/kafka"};
    stranger = {"spiffe-tunnel", "client", "--name", "stranger",
                "--listen", "127.0.0.1:" + std::to_string(stranger_port),
                "--target", "127.0.0.1:" + p, "--cert", s.x.cert, "--key", s.x.key,
                "--bundle", "site-b.demo=" + s.b.bundle, "--bundle", "stranger.demo=" + s.x.bundle,
                "--expect-id", "spiffe://site-b.demo/kafka"};
  }
  ~Tunnels() {
    for (pid_t pid : pids) {
      if (pid > 0) {
        ::kill(pid, SIGTERM);
        ::waitpid(pid, nullptr, 0);
      }
    }
  }

  // Starts the three and waits until each listens.
  bool start(const std::string& dir) {
    for (auto [args, name] : {std::pair{&server, "server"}, std::pair{&client, "client"},
                              std::pair{&stranger, "stranger"}}) {
      pids.push_back(spawn(*args, dir + "/" + name + ".log"));
    }
    if (std::find(pids.begin(), pids.end(), -1) != pids.end()) {
      return false;
    }
    for (const char* name : {"server", "client", "stranger"}) {
      if (!wait_for_listening(dir + "/" + name + ".log")) {
        return false;
      }
    }
    return true;
  }
};

// Sends through site A (must come back) and through the stranger (must be refused); prints what
// happened and the server's log. True when both behaved.
bool exchange_and_show(const Tunnels& t, const std::string& dir) {
  const std::string message = "hello from site A through mutual TLS";
  const std::string reply = exchange(t.client_port, message);
  std::cout << "site A sends  : " << message << "\n"
            << "site A gets   : " << reply << "\n";
  bool ok = true;
  if (reply != message) {
    std::cout << "FAILED: the echo did not come back; see " << dir << "/*.log\n";
    ok = false;
  }
  const std::string stranger_reply = exchange(t.stranger_port, "let me in");
  std::cout << "stranger.demo : " << (stranger_reply.empty() ? "refused (as it should be)" : "GOT IN")
            << "\n\n";
  ok = ok && stranger_reply.empty();
  std::cout << "server log (" << dir << "/server.log):\n";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the closing lines follow the reply
  std::ifstream log(dir + "/server.log");
  for (std::string line; std::getline(log, line);) {
    std::cout << "  " << line << "\n";
  }
  return ok;
}

void wait_for_interrupt(uint16_t client_port) {
  std::cout << "\nTry it:  echo hi | nc -q1 127.0.0.1 " << client_port
            << "    (Ctrl-C ends the demo)\n";
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sig = 0;
  sigwait(&set, &sig);
}

}  // namespace

int run_demo(const DemoOptions& options) {
  const std::string dir = demo_dir(options.dir);
  if (dir.empty()) {
    std::cerr << "demo: cannot create a temporary directory\n";
    return 1;
  }
  Sites sites;
  if (!mint_sites(dir, sites)) {
    return 1;
  }
  const uint16_t echo_port = start_echo();
  if (echo_port == 0) {
    std::cerr << "demo: cannot start the echo service\n";
    return 1;
  }
  Tunnels tunnels(sites, echo_port);
  std::cout << "spiffe-tunnel demo: certificates in " << dir << "\n\n"
            << "echo service        127.0.0.1:" << echo_port << "\n"
            << "server tunnel (B)   " << join(tunnels.server) << "\n"
            << "client tunnel (A)   " << join(tunnels.client) << "\n\n";
  if (!tunnels.start(dir)) {
    std::cerr << "demo: the tunnels did not start; see " << dir << "/*.log\n";
    return 1;
  }
  const bool ok = exchange_and_show(tunnels, dir);
  if (options.wait && ok) {
    wait_for_interrupt(tunnels.client_port);
  }
  std::cout << (ok ? "\ndemo OK\n" : "\ndemo FAILED\n");
  return ok ? 0 : 1;
}

}  // namespace spiffe_tunnel::app

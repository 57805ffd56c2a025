#include "cli.h"

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <iostream>

#include "daemon.h"
#include "demo.h"
#include "spiffe_tunnel/config/config.h"
#include "spiffe_tunnel/policy/authorizer.h"

namespace spiffe_tunnel::app {
namespace {

using config::Config;
using config::TunnelConfig;

// Raw flag values of `server` / `client`, turned into a Config by to_config().
struct TunnelFlags {
  std::string name;
  std::string listen, target;
  std::string cert, key;
  std::vector<std::string> bundles;
  std::string workload_api;
  bool use_workload_api = false;
  std::string svid, svid_hint;
  std::vector<std::string> peer_ids, peer_tds, peer_patterns;
  bool allow_any = false;
  std::string opa_url, opa_timeout = "2s";
  std::string tls_min = "1.3", tls_max = "1.3", cipher_suites, ciphers, ktls = "auto", server_name;
  std::string handshake_timeout = "10s", connect_timeout = "10s", idle_timeout = "0";
  std::size_t max_connections = 10000;
  std::size_t buffer_size = 64 * 1024;
};

struct GlobalFlags {
  std::string log_level = "info";
  std::size_t threads = 0;
  std::string admin;
  std::string busy_poll;
};

void add_tunnel_flags(CLI::App* cmd, TunnelFlags& f, bool server) {
  cmd->add_option("--name", f.name, "Tunnel name used in logs and metrics")
      ->default_val(server ? "server" : "client");
  cmd->add_option("--listen", f.listen,
                  server ? "Address for incoming mTLS, host:port" : "Address for plain TCP, host:port")
      ->required();
  cmd->add_option("--target", f.target,
                  server ? "Plain TCP target, host:port" : "Remote spiffe-tunnel (mTLS), host:port")
      ->required();
  cmd->add_option("--cert", f.cert, "PEM certificate chain of our SVID (leaf first)");
  cmd->add_option("--key", f.key, "PEM private key of our SVID");
  cmd->add_option("--bundle", f.bundles,
                  "TRUST_DOMAIN=FILE: CA bundle (PEM or SPIFFE JWKS) of a trusted trust domain; "
                  "repeat per trust domain");
  cmd->add_option("--workload-api", f.workload_api,
                  "SPIFFE Workload API address (unix:///path or tcp://ip:port); default "
                  "$SPIFFE_ENDPOINT_SOCKET");
  cmd->add_flag("--use-workload-api", f.use_workload_api,
                "Take the identity from the Workload API at $SPIFFE_ENDPOINT_SOCKET");
  cmd->add_option("--svid", f.svid, "Present the SVID with this SPIFFE ID");
  cmd->add_option("--svid-hint", f.svid_hint, "Present the SVID with this Workload API hint");
  const std::string verb = server ? "allow" : "expect";
  cmd->add_option("--" + verb + "-id", f.peer_ids, "Peer SPIFFE ID to " + verb + " (repeatable)");
  cmd->add_option("--" + verb + "-trust-domain", f.peer_tds,
                  "Trust domain whose every peer to " + verb + " (repeatable)");
  cmd->add_option("--" + verb + "-id-pattern", f.peer_patterns,
                  "SPIFFE ID pattern to " + verb +
                      ": '*' one segment or within a segment, '**' any depth (repeatable)");
  cmd->add_flag("--allow-any-peer-in-bundles", f.allow_any,
                "Accept any peer whose SVID verifies against a held bundle (no ID check)");
  cmd->add_option("--opa-url", f.opa_url,
                  "Also ask OPA: data API URL, e.g. http://127.0.0.1:8181/v1/data/tunnels/authz/allow");
  cmd->add_option("--opa-timeout", f.opa_timeout, "Limit for one OPA decision; no answer denies")
      ->capture_default_str();
  cmd->add_option("--tls-min-version", f.tls_min, "Lowest TLS version: 1.2 or 1.3")
      ->capture_default_str();
  cmd->add_option("--tls-max-version", f.tls_max, "Highest TLS version: 1.2 or 1.3")
      ->capture_default_str();
  cmd->add_option("--cipher-suites", f.cipher_suites, "TLS 1.3 cipher suites, OpenSSL syntax");
  cmd->add_option("--ciphers", f.ciphers, "TLS 1.2 ciphers, OpenSSL syntax");
  cmd->add_option("--ktls", f.ktls, "Kernel TLS offload: auto, on or off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  if (!server) {
    cmd->add_option("--server-name", f.server_name, "SNI to send to the remote");
  }
  cmd->add_option("--handshake-timeout", f.handshake_timeout, "TLS handshake limit (e.g. 10s)")
      ->capture_default_str();
  cmd->add_option("--connect-timeout", f.connect_timeout, "Target connect limit (e.g. 10s)")
      ->capture_default_str();
  cmd->add_option("--idle-timeout", f.idle_timeout,
                  "Close a session idle this long (e.g. 1h); 0 = never")
      ->capture_default_str();
  cmd->add_option("--buffer-size", f.buffer_size,
                  "Bytes moved per step on the userspace path (also the splice pipe size)")
      ->check(CLI::Range(std::size_t{32 * 1024}, std::size_t{16 * 1024 * 1024}))
      ->capture_default_str();
  cmd->add_option("--max-connections", f.max_connections, "Open sessions at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

base::Result<Config> to_config(const TunnelFlags& f, const GlobalFlags& g, bool server) {
  Config c;
  c.log_level = g.log_level;
  c.threads = g.threads;
  c.admin_listen = g.admin;
  const bool files = !f.cert.empty() || !f.key.empty() || !f.bundles.empty();
  const bool wl = f.use_workload_api || !f.workload_api.empty();
  if (files && wl) {
    return base::make_error("choose either --cert/--key/--bundle or --workload-api, not both");
  }
  if (files) {
    c.identity.kind = config::IdentityConfig::Kind::kFiles;
    c.identity.cert_file = f.cert;
    c.identity.key_file = f.key;
    if (f.cert.empty() || f.key.empty()) {
      return base::make_error("--cert and --key are both required with files");
    }
    for (const auto& b : f.bundles) {
      const size_t eq = b.find('=');
      if (eq == std::string::npos) {
        return base::make_error("flag --bundle \"" + b + "\": expected TRUST_DOMAIN=FILE");
      }
      auto td = spiffe::TrustDomain::parse(b.substr(0, eq));
      if (!td) {
        return td.error().wrap("flag --bundle");
      }
      c.identity.bundle_files.emplace_back(*td, b.substr(eq + 1));
    }
  } else if (wl) {
    c.identity.kind = config::IdentityConfig::Kind::kWorkloadApi;
    c.identity.workload_api = f.workload_api;
  }
  TunnelConfig t;
  t.name = f.name;
  t.origin = "command line";
  t.mode = server ? config::Mode::kServer : config::Mode::kClient;
  auto listen = config::parse_host_port(f.listen);
  if (!listen) {
    return listen.error().wrap("flag --listen");
  }
  t.listen = *listen;
  auto target = config::parse_host_port(f.target);
  if (!target) {
    return target.error().wrap("flag --target");
  }
  t.target = *target;
  const std::string verb = server ? "--allow" : "--expect";
  if (!f.svid.empty()) {
    auto id = spiffe::SpiffeId::parse(f.svid);
    if (!id) {
      return id.error().wrap("flag --svid");
    }
    t.svid_id = *id;
  }
  if (!f.svid_hint.empty()) {
    t.svid_hint = f.svid_hint;
  }
  for (const auto& s : f.peer_ids) {
    auto id = spiffe::SpiffeId::parse(s);
    if (!id) {
      return id.error().wrap("flag " + verb + "-id");
    }
    t.peer_ids.push_back(*id);
  }
  for (const auto& s : f.peer_tds) {
    auto td = spiffe::TrustDomain::parse(s);
    if (!td) {
      return td.error().wrap("flag " + verb + "-trust-domain");
    }
    t.peer_trust_domains.push_back(*td);
  }
  for (const auto& s : f.peer_patterns) {
    auto p = policy::IdPattern::parse(s);
    if (!p) {
      return p.error().wrap("flag " + verb + "-id-pattern");
    }
    t.peer_patterns.push_back(s);
  }
  t.allow_any_peer = f.allow_any;
  t.opa_url = f.opa_url;
  auto opa_timeout = config::parse_duration(f.opa_timeout);
  if (!opa_timeout) {
    return opa_timeout.error().wrap("flag --opa-timeout");
  }
  t.opa_timeout = *opa_timeout;
  t.tls_min_version = f.tls_min;
  t.tls_max_version = f.tls_max;
  t.tls13_ciphersuites = f.cipher_suites;
  t.tls12_ciphers = f.ciphers;
  t.ktls = f.ktls;
  t.server_name = f.server_name;
  for (auto [flag, text, out] :
       {std::tuple{"--handshake-timeout", &f.handshake_timeout, &t.handshake_timeout},
        std::tuple{"--connect-timeout", &f.connect_timeout, &t.connect_timeout},
        std::tuple{"--idle-timeout", &f.idle_timeout, &t.idle_timeout}}) {
    auto d = config::parse_duration(*text);
    if (!d) {
      return d.error().wrap(std::string("flag ") + flag);
    }
    *out = *d;
  }
  t.max_connections = f.max_connections;
  t.buffer_size = f.buffer_size;
  c.tunnels.push_back(std::move(t));
  auto st = config::validate(c);
  if (!st) {
    return st.error();
  }
  return c;
}

bool set_log_level(const std::string& level) {
  auto l = spdlog::level::from_str(level);
  if (l == spdlog::level::off && level != "off") {
    return false;
  }
  spdlog::set_level(l);
  return true;
}

int fail(const std::string& message) {
  std::cerr << "spiffe-tunnel: " << message << "\n";
  return 2;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{
      "spiffe-tunnel: SPIFFE-aware mutual TLS tunnels.\n"
      "  server: accept mTLS, forward plain TCP to a local target\n"
      "  client: accept plain TCP, forward over mTLS to a remote site\n"
      "  run:    run every tunnel of a YAML configuration file\n"
      "  demo:   make throwaway trust domains and show a tunnel pair working",
      "spiffe-tunnel"};
  app.require_subcommand(1);
  // Global flags (--log-level, --admin, --threads) may also follow the subcommand.
  app.fallthrough();
  app.set_version_flag("--version", "spiffe-tunnel 0.1.0");
  GlobalFlags g;
  app.add_option("--log-level", g.log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  app.add_option("--threads", g.threads, "Data-path threads (default: one per core)");
  app.add_option("--admin", g.admin, "Admin HTTP endpoint host:port (/metrics, /healthz, /readyz)");
  app.add_option("--busy-poll", g.busy_poll,
                 "Keep polling this long after the last event before sleeping (e.g. 200us; "
                 "default 0): lower latency on VMs for more CPU");

  TunnelFlags server_flags, client_flags;
  auto* server = app.add_subcommand("server", "Accept mTLS, forward plain TCP to a target");
  add_tunnel_flags(server, server_flags, true);
  auto* client = app.add_subcommand("client", "Accept plain TCP, forward over mTLS");
  add_tunnel_flags(client, client_flags, false);

  std::string config_path;
  auto* run = app.add_subcommand("run", "Run the tunnels of a configuration file");
  run->add_option("-c,--config", config_path, "YAML configuration file")->required();
  auto* check = app.add_subcommand("check-config", "Validate a configuration file and exit");
  check->add_option("-c,--config", config_path, "YAML configuration file")->required();

  DemoOptions demo_options;
  auto* demo = app.add_subcommand("demo", "Run a self-contained demo with throwaway trust domains");
  demo->add_option("--dir", demo_options.dir, "Keep the demo's certificates in this directory");
  demo->add_flag("--wait", demo_options.wait, "Keep the tunnels up for trying by hand (Ctrl-C ends)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("spiffe-tunnel"));
  if (!set_log_level(g.log_level)) {
    return fail("flag --log-level: \"" + g.log_level + "\" is not a log level");
  }
  // Logs go to stderr (journald and kubectl logs take both); stdout is for command output.
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);

  if (*demo) {
    return run_demo(demo_options);
  }
  base::Result<Config> cfg = base::Error{"no command"};
  if (*server) {
    cfg = to_config(server_flags, g, true);
  } else if (*client) {
    cfg = to_config(client_flags, g, false);
  } else if (*run || *check) {
    cfg = config::load_config_file(config_path);
  }
  if (!cfg) {
    return fail(cfg.error().message);
  }
  if (!g.busy_poll.empty()) {  // for every command, over the file's busy_poll
    auto d = config::parse_busy_poll(g.busy_poll);
    if (!d) {
      return fail("flag --busy-poll: " + d.error().message);
    }
    cfg->busy_poll = *d;
  }
  if (*check) {
    std::cout << config_path << ": OK, " << cfg->tunnels.size() << " tunnel(s)\n";
    return 0;
  }
  if (*run) {
    if (!set_log_level(cfg->log_level)) {
      return fail(config_path + ": log_level \"" + cfg->log_level + "\" is not a log level");
    }
    if (g.threads != 0) {
      cfg->threads = g.threads;
    }
    if (!g.admin.empty()) {
      cfg->admin_listen = g.admin;
    }
  }
  return run_daemon(*cfg);
}

}  // namespace spiffe_tunnel::app

#include "cli.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <signal.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <sstream>

#include "daemon.h"
#include "demo.h"
#include "logging.h"
#include "wait_ready.h"
#include "spiffe_tunnel/config/config.h"
#include "spiffe_tunnel/config/flags.h"
#include "spiffe_tunnel/config/values.h"
#include "spiffe_tunnel/config/wait_ready.h"

namespace spiffe_tunnel::app {
namespace {

using config::Config;

// Flags take their defaults from the config model; the help shows them.
const config::TunnelConfig kTunnelDefaults{};
const config::OpaConfig kOpaDefaults{};

void add_peer_flags(CLI::App* cmd, config::TunnelFlags& f, bool server) {
  const std::string verb = server ? "allow" : "expect";
  cmd->add_option("--" + verb + "-id", f.peer_ids, "Peer SPIFFE ID to " + verb + " (repeatable)");
  cmd->add_option("--" + verb + "-trust-domain", f.peer_trust_domains,
                  "Trust domain whose every peer to " + verb + " (repeatable)");
  cmd->add_option("--" + verb + "-id-pattern", f.peer_patterns,
                  "SPIFFE ID pattern to " + verb +
                      ": '*' one segment or within a segment, '**' any depth (repeatable)");
  cmd->add_flag("--allow-any-peer-in-bundles", f.allow_any,
                "Accept any peer whose SVID verifies against a held bundle (no ID check)");
  cmd->add_option("--opa-url", f.opa_url,
                  "Also ask OPA: data API URL, e.g. http://127.0.0.1:8181/v1/data/tunnels/authz/allow");
  cmd->add_option("--opa-timeout", f.opa_timeout, "Limit for one OPA decision; no answer denies")
      ->default_str(config::format_duration(kOpaDefaults.timeout));
}

void add_tls_flags(CLI::App* cmd, config::TunnelFlags& f, bool server) {
  const config::TlsConfig& d = kTunnelDefaults.tls;
  cmd->add_option("--tls-min-version", f.tls_min, "Lowest TLS version: 1.2 or 1.3")
      ->default_str(std::string(config::tls_version_name(d.min_version)));
  cmd->add_option("--tls-max-version", f.tls_max, "Highest TLS version: 1.2 or 1.3")
      ->default_str(std::string(config::tls_version_name(d.max_version)));
  cmd->add_option("--cipher-suites", f.cipher_suites, "TLS 1.3 cipher suites, OpenSSL syntax");
  cmd->add_option("--ciphers", f.ciphers, "TLS 1.2 ciphers, OpenSSL syntax");
  cmd->add_option("--ktls", f.ktls, "Kernel TLS offload: auto, on or off")
      ->default_str(std::string(config::ktls_name(d.ktls)));
  if (!server) {
    cmd->add_option("--server-name", f.server_name, "SNI to send to the remote");
  }
  cmd->add_option("--key-update-records", f.key_update_records,
                  "TLS 1.3 records per traffic key before a KeyUpdate; a kernel-offloaded "
                  "AES-GCM direction ends the session there instead (low values: tests only)")
      ->default_str(std::to_string(d.key_update_records));
  cmd->add_flag("--session-resumption", f.session_resumption,
                "TLS 1.3 session resumption with the peer tunnel (both ends must enable it)");
  cmd->add_option("--session-ticket-lifetime", f.session_ticket_lifetime,
                  "Longest use of a session ticket, and the ticket key rotation (e.g. 1h)")
      ->default_str(config::format_duration(d.session_ticket_lifetime));
}

void add_limit_flags(CLI::App* cmd, config::TunnelFlags& f) {
  const config::TunnelConfig& d = kTunnelDefaults;
  cmd->add_option("--handshake-timeout", f.handshake_timeout, "TLS handshake limit (e.g. 10s)")
      ->default_str(config::format_duration(d.handshake_timeout));
  cmd->add_option("--connect-timeout", f.connect_timeout, "Target connect limit (e.g. 10s)")
      ->default_str(config::format_duration(d.connect_timeout));
  cmd->add_option("--idle-timeout", f.idle_timeout,
                  "Close a session idle this long (e.g. 1h); 0 = never")
      ->default_str(config::format_duration(d.idle_timeout));
  cmd->add_option("--max-connection-age", f.max_connection_age,
                  "End a session this long after accept (e.g. 24h); 0 = never")
      ->default_str("0");
  cmd->add_option("--buffer-size", f.buffer_size,
                  "Bytes moved per step on the userspace path (also the splice pipe size)")
      ->default_str(std::to_string(d.buffer_size));
  cmd->add_option("--max-connections", f.max_connections,
                  "Established sessions at most (handshakes count separately)")
      ->default_str(std::to_string(d.max_connections));
  const config::Config globals;
  cmd->add_option("--max-handshakes", f.max_handshakes, "Handshakes in flight at most")
      ->default_str(std::to_string(globals.max_handshakes));
  cmd->add_option("--max-handshakes-per-source", f.max_handshakes_per_source,
                  "Handshakes in flight per IPv4 address or IPv6 /64 at most")
      ->default_str(std::to_string(globals.max_handshakes_per_source));
}

// Shown on `server` only; `client` takes it too (hidden), so that validate() can say why not.
void add_proxy_protocol_flag(CLI::App* cmd, config::TunnelFlags& f, bool server) {
  const auto fallback = config::proxy_protocol_name(kTunnelDefaults.proxy_protocol);
  auto* opt = cmd->add_option("--proxy-protocol", f.proxy_protocol,
                              "Send the target a PROXY protocol header first (peer address, TLS "
                              "facts, SPIFFE ID): off or v2")
                  ->default_str(std::string(fallback));
  if (!server) {
    opt->group("");
  }
}

void add_tunnel_flags(CLI::App* cmd, config::TunnelFlags& f, bool server) {
  cmd->add_option("--name", f.name, "Tunnel name used in logs and metrics")
      ->default_str(server ? "server" : "client");
  cmd->add_option("--listen", f.listen,
                  std::string(server ? "Address for incoming mTLS" : "Address for plain TCP") +
                      ": host:port, [v6]:port, :port (binds 127.0.0.1 only, unlike ghostunnel; "
                      "write 0.0.0.0:port for every interface), unix:/path, or systemd:NAME "
                      "(a socket passed by systemd socket activation)")
      ->required();
  cmd->add_option("--target", f.target,
                  server ? "Plain target: host:port or unix:/path"
                         : "Remote spiffe-tunnel (mTLS): host:port or unix:/path")
      ->required();
  cmd->add_option("--listen-mode", f.listen_mode,
                  "Permission bits of a unix:/path listen socket, octal (e.g. 0660)");
  cmd->add_option("--listen-owner", f.listen_owner,
                  "Owner (user name or uid) of a unix:/path listen socket");
  cmd->add_option("--listen-group", f.listen_group,
                  "Group (name or gid) of a unix:/path listen socket");
  cmd->add_option("--cert", f.cert, "PEM certificate chain of our SVID (leaf first)");
  cmd->add_option("--key", f.key, "PEM private key of our SVID");
  cmd->add_option("--key-permissions", f.key_permissions,
                  "strict (default): refuse a --key file that group or others may access; "
                  "warn: load it and log a warning");
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
  add_peer_flags(cmd, f, server);
  add_tls_flags(cmd, f, server);
  add_limit_flags(cmd, f);
  add_proxy_protocol_flag(cmd, f, server);
}

void add_global_flags(CLI::App& app, config::GlobalFlags& g) {
  const Config defaults;
  app.add_option("--log-level", g.log_level, "trace, debug, info, warn, error")
      ->default_str(std::string(config::log_level_name(defaults.log_level)));
  app.add_option("--log-format", g.log_format,
                 "Log lines as text or json (one object per line); under systemd, text goes to "
                 "the journal with fields")
      ->default_str(std::string(config::log_format_name(defaults.log_format)));
  app.add_option("--threads", g.threads, "Data-path threads (default: one per core)");
  app.add_option("--admin", g.admin,
                 "Admin HTTP endpoint host:port, TCP only; :port binds 127.0.0.1 (/metrics, "
                 "/healthz, /readyz)");
  app.add_option("--busy-poll", g.busy_poll,
                 "Keep polling this long after the last event before sleeping (e.g. 200us; "
                 "default 0): lower latency on VMs for more CPU");
}

CLI::App* add_wait_ready_command(CLI::App& app, config::WaitReadyFlags& f) {
  auto* cmd = app.add_subcommand(
      "wait-ready",
      "Wait until the identity source has delivered an SVID (and bundles), print it, exit 0.\n"
      "Exit codes: 0 ready, 1 bad flags or configuration, 2 timed out (reason on stderr),\n"
      "128+N ended by signal N (SIGINT, SIGTERM)");
  cmd->add_option("-c,--config", f.config_file, "Take the identity section of this YAML file");
  cmd->add_option("--workload-api", f.workload_api,
                  "SPIFFE Workload API address (unix:///path or tcp://ip:port); default "
                  "$SPIFFE_ENDPOINT_SOCKET");
  cmd->add_option("--cert", f.cert, "Wait for this PEM certificate chain (with --key, --bundle)");
  cmd->add_option("--key", f.key, "PEM private key matching --cert");
  cmd->add_option("--key-permissions", f.key_permissions,
                  "strict (default) or warn: a --key file that group or others may access");
  cmd->add_option("--bundle", f.bundles, "TRUST_DOMAIN=FILE bundle to wait for (repeatable)");
  cmd->add_option("--svid", f.svid, "Wait for the SVID with this SPIFFE ID");
  cmd->add_option("--svid-hint", f.svid_hint, "Wait for the SVID with this Workload API hint");
  cmd->add_option("--trust-domain", f.trust_domains,
                  "Wait for this trust domain's bundle too (repeatable; default: the SVID's own)");
  cmd->add_option("--timeout", f.timeout,
                  "Give up after this long (exit 2, with the reason on stderr)")
      ->default_str(config::format_duration(config::WaitReadyConfig{}.timeout));
  return cmd;
}

// One line per error: a configuration file can have several.
int fail(const std::string& message) {
  std::istringstream lines(message);
  for (std::string line; std::getline(lines, line);) {
    std::cerr << "spiffe-tunnel: " << line << "\n";
  }
  return 2;
}

// The commands that read a configuration file: run, check-config, reload.
struct FileCommands {
  std::string path;
  pid_t reload_pid = 0;
  CLI::App* check = nullptr;
  CLI::App* reload = nullptr;

  // Adds the three; returns `run`.
  CLI::App* add(CLI::App& app) {
    auto* run = app.add_subcommand("run", "Run the tunnels of a configuration file");
    run->add_option("-c,--config", path, "YAML configuration file")->required();
    check = app.add_subcommand("check-config", "Validate a configuration file and exit");
    check->add_option("-c,--config", path, "YAML configuration file")->required();
    reload = app.add_subcommand(
        "reload",
        "Validate a configuration file, then ask the running daemon to reload it (SIGHUP)");
    reload->add_option("-c,--config", path, "YAML configuration file")->required();
    reload->add_option("--pid", reload_pid,
                       "Process ID of the running daemon (systemd: ExecReload=... --pid "
                       "$MAINPID); without it, only validate");
    return run;
  }
};

// `reload --pid`: the file is valid, so ask the daemon to take it.
int signal_reload(pid_t pid) {
  if (pid <= 0) {
    return 0;
  }
  if (::kill(pid, SIGHUP) != 0) {
    return fail("cannot signal process " + std::to_string(pid) + ": " + std::strerror(errno));
  }
  std::cout << "reload requested from process " << pid << "\n";
  return 0;
}

int wait_ready_with(const config::WaitReadyFlags& flags) {
  auto wait = config::read_wait_ready_flags(flags);
  if (!wait) {
    fail(wait.error().message);
    return kWaitReadyBadUsage;
  }
  return run_wait_ready(*wait);
}

// `run -c FILE`: SIGHUP reads the same file again, with the same command-line overrides.
int run_file_daemon(const Config& config, const std::string& path,
                    const config::Overrides& overrides) {
  return run_daemon(config, [path, overrides] {
    auto next = config::read_config_file(path);
    return next ? config::finalize(std::move(*next), overrides) : next;
  });
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{
      "spiffe-tunnel: SPIFFE-aware mutual TLS tunnels.\n"
      "  server: accept mTLS, forward plain TCP to a local target\n"
      "  client: accept plain TCP, forward over mTLS to a remote site\n"
      "  run:    run every tunnel of a YAML configuration file (SIGHUP reloads it)\n"
      "  wait-ready: wait until the identity source delivers an SVID and bundles\n"
      "  demo:   make throwaway trust domains and show a tunnel pair working",
      "spiffe-tunnel"};
  app.require_subcommand(1);
  // Global flags (--log-level, --admin, --threads, --busy-poll) may also follow the subcommand.
  app.fallthrough();
  app.set_version_flag("--version", "spiffe-tunnel 0.1.0");
  config::GlobalFlags g;
  add_global_flags(app, g);

  config::TunnelFlags server_flags, client_flags;
  auto* server = app.add_subcommand("server", "Accept mTLS, forward plain TCP to a target");
  add_tunnel_flags(server, server_flags, true);
  auto* client = app.add_subcommand("client", "Accept plain TCP, forward over mTLS");
  add_tunnel_flags(client, client_flags, false);

  FileCommands files;
  auto* run = files.add(app);
  auto* check = files.check;
  auto* reload = files.reload;
  const std::string& config_path = files.path;

  config::WaitReadyFlags wait_flags;
  auto* wait_ready = add_wait_ready_command(app, wait_flags);

  DemoOptions demo_options;
  auto* demo = app.add_subcommand("demo", "Run a self-contained demo with throwaway trust domains");
  demo->add_option("--dir", demo_options.dir, "Keep the demo's certificates in this directory");
  demo->add_flag("--wait", demo_options.wait, "Keep the tunnels up for trying by hand (Ctrl-C ends)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    // wait-ready documents 1 for every usage error (CLI11 has codes of its own).
    return (wait_ready->parsed() && rc != 0) ? kWaitReadyBadUsage : rc;
  }
  auto overrides = config::read_global_flags(g);
  if (!overrides) {
    const int rc = fail(overrides.error().message);
    return *wait_ready ? kWaitReadyBadUsage : rc;
  }
  set_log_level(overrides->log_level.value_or(Config{}.log_level));
  // Logs go to stderr (journald and kubectl logs take both); stdout is for command output.
  configure_logging(overrides->log_format.value_or(Config{}.log_format));

  if (*demo) {
    return run_demo(demo_options);
  }
  if (*wait_ready) {
    return wait_ready_with(wait_flags);
  }
  base::Result<Config> draft = base::Error{"no command"};
  if (*server) {
    draft = config::read_tunnel_flags(server_flags, config::Mode::kServer);
  } else if (*client) {
    draft = config::read_tunnel_flags(client_flags, config::Mode::kClient);
  } else if (*run || *check || *reload) {
    draft = config::read_config_file(config_path);
  }
  if (!draft) {
    return fail(draft.error().message);
  }
  auto cfg = config::finalize(std::move(*draft), *overrides);
  if (!cfg) {
    return fail(cfg.error().message);
  }
  if (*check || *reload) {
    std::cout << config_path << ": OK, " << cfg->tunnels.size() << " tunnel(s)\n";
    return *reload ? signal_reload(files.reload_pid) : 0;
  }
  set_log_level(cfg->log_level);
  configure_logging(cfg->log_format);
  return *run ? run_file_daemon(*cfg, config_path, *overrides) : run_daemon(*cfg);
}

}  // namespace spiffe_tunnel::app

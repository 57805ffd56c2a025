// unix: and systemd: addresses, the settings of created unix sockets, and where each kind of
// address is allowed: through the value parsers, the YAML reader (errors with file:line:col) and
// the flags.

#include <unistd.h>

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "config/config_test_support.h"
#include "spiffe_tunnel/config/flags.h"
#include "spiffe_tunnel/config/values.h"

using namespace spiffe_tunnel::config;
using namespace spiffe_tunnel::config::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

// A server tunnel "web" (lines 3-8 after the identity) with the given listen and target, and a
// peer rule; `extra` lines follow.
std::string web(const std::string& listen, const std::string& target, const std::string& extra = "",
                const std::string& mode = "server") {
  return std::string(kWorkloadApiIdentity) + "tunnels:\n  - name: web\n    mode: " + mode +
         "\n    listen: " + listen + "\n    target: " + target + "\n    " +
         (mode == "server" ? "allow" : "expect") + ": {any: true}\n" + extra;
}

}  // namespace

TEST_CASE("parse_endpoint reads unix:/path, unix:///path and systemd:NAME") {
  auto a = parse_endpoint("unix:/run/app.sock");
  REQUIRE(a.ok());
  REQUIRE(a->unix_path() != nullptr);
  CHECK(a->unix_path()->path == "/run/app.sock");
  CHECK(a->str() == "unix:/run/app.sock");

  auto b = parse_endpoint("unix:///run/app.sock");  // go-spiffe's spelling, the same path
  REQUIRE(b.ok());
  CHECK(*a == *b);

  auto s = parse_endpoint("systemd:web-tls");
  REQUIRE(s.ok());
  REQUIRE(s->systemd() != nullptr);
  CHECK(s->systemd()->name == "web-tls");
  CHECK(s->str() == "systemd:web-tls");
  CHECK(s->tcp() == nullptr);
}

TEST_CASE("parse_endpoint refuses unix: forms that are not a local absolute path") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"unix://host/run/app.sock", "names a host; a unix socket is a local path"},
      {"unix:run/app.sock", "the socket path must be absolute"},
      {"unix:", "has no path"},
      {"unix://", "has no path"},
      {"unix:/" + std::string(200, 'x'), "longer than 107 bytes"},
      {"systemd:", "expected systemd:NAME"},
      {"systemd:a:b", "expected systemd:NAME"},
      {"systemd:with space", "expected systemd:NAME"},
  };
  for (const auto& [text, reason] : cases) {
    INFO(text);
    auto e = parse_endpoint(text);
    REQUIRE_FALSE(e.ok());
    CHECK_THAT(e.error().message, Contains(reason));
  }
}

TEST_CASE("socket modes are octal permission bits; users and groups are names or numbers") {
  CHECK(*parse_socket_mode("0660") == 0660);
  CHECK(*parse_socket_mode("660") == 0660);
  CHECK(*parse_socket_mode("0o600") == 0600);
  for (const char* bad : {"", "0x1ff", "rw-rw----", "0888", "-0660", "+660"}) {
    INFO(bad);
    CHECK_THAT(parse_socket_mode(bad).error().message, Contains("is not an octal file mode"));
  }
  CHECK_THAT(parse_socket_mode("04755").error().message, Contains("only permission bits"));

  CHECK(*parse_user("root") == 0);
  CHECK(*parse_user("1234") == 1234);
  CHECK(*parse_group("root") == 0);
  CHECK(*parse_group("4321") == 4321);
  CHECK_THAT(parse_user("no-such-user-here").error().message,
             Contains("no user \"no-such-user-here\" on this system"));
  CHECK_THAT(parse_group("no-such-group-here").error().message,
             Contains("no group \"no-such-group-here\" on this system"));
}

TEST_CASE("a unix listen with mode, owner and group, and a unix target, load from YAML") {
  const Config c = load_ok(web("unix:///run/st/web.sock", "unix:/run/app/backend.sock",
                               "    listen_mode: \"0660\"\n    listen_owner: root\n"
                               "    listen_group: \"0\"\n"));
  const TunnelConfig& t = c.tunnels.at(0);
  CHECK(t.listen.str() == "unix:/run/st/web.sock");
  CHECK(t.target.str() == "unix:/run/app/backend.sock");
  CHECK(t.listen_socket.mode == 0660u);
  CHECK(t.listen_socket.owner == 0u);
  CHECK(t.listen_socket.group == 0u);

  // An unquoted 0660 is the same text to the reader: modes are always octal.
  CHECK(load_ok(web("unix:/s", ":80", "    listen_mode: 0660\n")).tunnels[0].listen_socket.mode ==
        0660u);
  const Config s = load_ok(web("systemd:web", ":80"));
  CHECK(s.tunnels[0].listen.systemd()->name == "web");
}

TEST_CASE("address errors name the file, line and column") {
  struct Case {
    std::string yaml;
    std::string where;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {web("unix://host/x.sock", ":80"), "test.yaml:6:13",
       "tunnel \"web\": listen: \"unix://host/x.sock\" names a host"},
      {web(":8443", "unix:x.sock"), "test.yaml:7:13",
       "tunnel \"web\": target: \"unix:x.sock\": the socket path must be absolute"},
      {web(":8443", "unix:/b", "    listen_mode: \"0660\"\n"), "test.yaml:9:18",
       "tunnel \"web\": listen_mode applies to a unix:/path listen address only (127.0.0.1:8443"},
      {web("unix:/a", "unix:/b", "    listen_mode: rw\n"), "test.yaml:9:18",
       "tunnel \"web\": listen_mode: \"rw\" is not an octal file mode"},
      {web("unix:/a", "unix:/b", "    listen_owner: no-such-user-here\n"), "test.yaml:9:19",
       "tunnel \"web\": listen_owner: no user \"no-such-user-here\""},
      {web("unix:/a", "unix:/b", "    listen_group: no-such-group-here\n"), "test.yaml:9:19",
       "tunnel \"web\": listen_group: no group \"no-such-group-here\""},
      // Cross-field rules: the error points at the tunnel.
      {web(":8443", "systemd:db"), "test.yaml:4:5",
       "tunnel \"web\": target systemd:db: systemd: names a listening socket"},
      {web("unix:/a", ":80", "    tls: {ktls: on}\n"), "test.yaml:4:5",
       "tunnel \"web\": ktls is \"on\" but the TLS side (unix:/a) is a unix socket"},
      {web(":8080", "unix:/r", "    tls: {ktls: on}\n", "client"), "test.yaml:4:5",
       "ktls is \"on\" but the TLS side (unix:/r) is a unix socket"},
      {web("unix:/a", ":80") + "  - {name: two, mode: server, listen: \"unix:///a\", target: "
                                 "\":81\", allow: {any: true}}\n",
       "test.yaml:9:5", "tunnel \"two\": listen address unix:/a is used by another tunnel"},
      {web("systemd:w", ":80") + "  - {name: two, mode: server, listen: \"systemd:w\", target: "
                                   "\":81\", allow: {any: true}}\n",
       "test.yaml:9:5", "tunnel \"two\": listen address systemd:w is used by another tunnel"},
  };
  for (const auto& c : cases) {
    INFO(c.yaml);
    const std::string message = error_of(c.yaml);
    CHECK_THAT(message, StartsWith(c.where + ": "));
    CHECK_THAT(message, Contains(c.reason));
  }
  // A unix: path is allowed where the TLS side is TCP, with ktls on.
  load_ok(web(":8443", "unix:/b", "    tls: {ktls: on}\n"));
  load_ok(web("unix:/a", ":80", "    tls: {ktls: on}\n", "client"));
}

TEST_CASE("the admin endpoint is TCP only") {
  CHECK_THAT(error_of(web(":8443", ":80") + "admin: {listen: \"unix:/run/admin.sock\"}\n"),
             Contains("admin endpoint unix:/run/admin.sock: the admin endpoint listens on TCP "
                      "host:port only"));
}

TEST_CASE("flags take unix: and systemd: addresses and the listen socket settings") {
  IdentityFiles dir;
  TunnelFlags f;
  f.listen = "unix:/run/st/in.sock";
  f.target = "unix:///run/app.sock";
  f.listen_mode = "0600";
  f.listen_group = "0";
  f.cert = dir.path("svid.pem");
  f.key = dir.path("key.pem");
  f.bundles = {"example.org=" + dir.path("bundle.pem")};
  f.allow_any = true;
  auto draft = read_tunnel_flags(f, Mode::kClient);
  REQUIRE(draft.ok());
  auto c = finalize(std::move(*draft), {});
  INFO((c.ok() ? "" : c.error().message));
  REQUIRE(c.ok());
  CHECK(c->tunnels[0].listen.unix_path()->path == "/run/st/in.sock");
  CHECK(c->tunnels[0].target.unix_path()->path == "/run/app.sock");
  CHECK(c->tunnels[0].listen_socket.mode == 0600u);
  CHECK(c->tunnels[0].listen_socket.group == 0u);

  f.listen_mode = "07777";
  CHECK_THAT(read_tunnel_flags(f, Mode::kClient).error().message,
             StartsWith("flag --listen-mode: \"07777\": only permission bits"));
  f.listen_mode = "0600";
  f.listen = "127.0.0.1:9000";
  auto tcp = read_tunnel_flags(f, Mode::kClient);
  REQUIRE(tcp.ok());
  CHECK_THAT(finalize(std::move(*tcp), {}).error().message,
             StartsWith("command line: tunnel \"client\": listen_mode, listen_owner and "
                        "listen_group apply to a unix:/path listen address only"));
  f.listen_mode.clear();
  f.target = "systemd:x";
  auto target = read_tunnel_flags(f, Mode::kClient);
  REQUIRE(target.ok());
  CHECK_THAT(finalize(std::move(*target), {}).error().message,
             Contains("target systemd:x: systemd: names a listening socket"));
}

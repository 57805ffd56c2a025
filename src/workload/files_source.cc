#include "spiffe_tunnel/workload/files_source.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace spiffe_tunnel::workload {
namespace {

base::Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return base::make_error(path + ": " + std::strerror(errno));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

FilesSource::FilesSource(FilesSourceOptions options) : options_(std::move(options)) {}

FilesSource::~FilesSource() { stop(); }

std::string FilesSource::describe() const { return "files " + options_.cert_file; }

base::Result<X509Context> FilesSource::load() const {
  auto cert = read_file(options_.cert_file);
  if (!cert) {
    return cert.error().wrap("certificate file");
  }
  auto key = read_file(options_.key_file);
  if (!key) {
    return key.error().wrap("private key file");
  }
  auto svid = spiffe::X509Svid::from_pem(*cert, *key);
  if (!svid) {
    return svid.error().wrap("SVID from " + options_.cert_file + " and " + options_.key_file);
  }
  X509Context ctx;
  for (const auto& [td, path] : options_.bundle_files) {
    auto data = read_file(path);
    if (!data) {
      return data.error().wrap("bundle file for " + td.name());
    }
    auto bundle = spiffe::Bundle::parse(td, *data);
    if (!bundle) {
      return bundle.error().wrap("bundle file " + path + " for trust domain " + td.name());
    }
    ctx.bundles.put(std::make_shared<const spiffe::Bundle>(std::move(*bundle)));
  }
  ctx.svids.push_back(std::make_shared<const spiffe::X509Svid>(std::move(*svid)));
  return ctx;
}

std::string FilesSource::fingerprint() const {
  std::string fp;
  auto add = [&fp](const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      fp += path + ":missing;";
      return;
    }
    fp += path + ":" + std::to_string(st.st_ino) + "/" + std::to_string(st.st_size) + "/" +
          std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ";";
  };
  add(options_.cert_file);
  add(options_.key_file);
  for (const auto& [td, path] : options_.bundle_files) {
    add(path);
  }
  return fp;
}

void FilesSource::start(SourceCallbacks callbacks) {
  callbacks_ = std::move(callbacks);
  thread_ = std::thread([this] { run(); });
}

void FilesSource::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

void FilesSource::run() {
  std::string attempted;  // fingerprint of the last set we tried to load
  for (;;) {
    const std::string fp = fingerprint();
    if (fp != attempted) {
      attempted = fp;
      auto ctx = load();
      if (ctx) {
        spdlog::info("identity: loaded {} from {}", ctx->svids.front()->id.str(),
                     options_.cert_file);
        callbacks_.on_update(std::move(*ctx));
      } else {
        spdlog::warn("identity: ignoring changed files, keeping the last good identity: {}",
                     ctx.error().message);
        if (callbacks_.on_failure) {
          callbacks_.on_failure({SourceFailure::Kind::kOther, ctx.error().message});
        }
      }
    }
    std::unique_lock lock(mutex_);
    if (cv_.wait_for(lock, options_.poll_interval, [this] { return stopping_; })) {
      return;
    }
  }
}

}  // namespace spiffe_tunnel::workload

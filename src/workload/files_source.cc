#include "spiffe_tunnel/workload/files_source.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <fcntl.h>
#include <openssl/crypto.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "spiffe_tunnel/base/unique_fd.h"

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

// Key text read from a file; wiped when it goes. The buffer is sized once from the file's length,
// so no re-allocation leaves a copy behind.
class KeyText {
 public:
  explicit KeyText(std::size_t capacity) : bytes_(capacity) {}
  KeyText(KeyText&&) = default;
  KeyText& operator=(KeyText&&) = delete;
  ~KeyText() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

  std::string_view view() const { return {bytes_.data(), size_}; }
  // Reads `fd` to its end or until the buffer is full; false on a read error.
  bool read_from(int fd) {
    ssize_t n = 0;
    while (size_ < bytes_.size() &&
           (n = ::read(fd, bytes_.data() + size_, bytes_.size() - size_)) > 0) {
      size_ += static_cast<std::size_t>(n);
    }
    return n >= 0;
  }

 private:
  std::vector<char> bytes_;
  std::size_t size_ = 0;
};

// A private key far larger than any PEM key (an RSA-16384 PKCS#8 PEM is under 13 KiB).
constexpr off_t kMaxKeyFile = 1 << 20;

std::string octal_mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

// Checks, on the opened file, that neither group nor others may access the key (as ssh does for
// its keys). `strict` refuses such a file; otherwise it is loaded with a warning.
base::Status check_key_mode(const std::string& path, const struct stat& st, bool strict) {
  if (!S_ISREG(st.st_mode) || st.st_size > kMaxKeyFile) {
    return base::make_error(path + ": not a regular file of at most 1 MiB");
  }
  if ((st.st_mode & 077) == 0) {
    return {};
  }
  if (strict) {
    return base::make_error(path + " has mode " + octal_mode(st.st_mode) +
                            ", so group or others may access the private key; make it readable "
                            "by its owner only (chmod 600 " + path +
                            "), or set identity.files.key_permissions: warn");
  }
  spdlog::warn("identity: private key file {} has mode {}: group or others may access it "
               "(identity.files.key_permissions: warn); chmod 600 it",
               path, octal_mode(st.st_mode));
  return {};
}

base::Result<KeyText> read_key_file(const std::string& path, bool strict) {
  const base::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (!fd.valid() || ::fstat(fd.get(), &st) != 0) {
    return base::make_error(path + ": " + std::strerror(errno));
  }
  if (auto ok = check_key_mode(path, st, strict); !ok) {
    return ok.error();
  }
  KeyText text(static_cast<std::size_t>(st.st_size) + 1);  // + 1: a file that grew is seen
  if (!text.read_from(fd.get())) {
    return base::make_error(path + ": " + std::strerror(errno));
  }
  return text;
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
  auto key = read_key_file(options_.key_file, options_.strict_key_permissions);
  if (!key) {
    return key.error().wrap("private key file");
  }
  auto svid = spiffe::X509Svid::from_pem(*cert, key->view());
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

#pragma once
// FilesSource: an identity from PEM files on disk (certificate chain, private key, and one bundle
// file per trust domain), for hosts without a SPIRE agent -- e.g. files written by spiffe-helper.
// A background thread polls the files' identity (inode, size, mtime) and reloads when any
// changes, including replace-by-rename. A set that does not parse or does not match (half
// written, cert and key from different rotations) is logged and skipped; the last good set stays.
// The key file must be accessible to its owner only (see FilesSourceOptions); its text is wiped
// from memory once parsed.

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/workload/x509_context.h"

namespace spiffe_tunnel::workload {

struct FilesSourceOptions {
  std::string cert_file;
  std::string key_file;
  std::vector<std::pair<spiffe::TrustDomain, std::string>> bundle_files;
  std::chrono::milliseconds poll_interval{500};
  // A key file that group or others may access is refused (true) or loaded with a warning.
  bool strict_key_permissions = true;
};

class FilesSource final : public IdentitySource {
 public:
  explicit FilesSource(FilesSourceOptions options);
  ~FilesSource() override;

  // Reads and checks the files once; the error names the file that is wrong.
  base::Result<X509Context> load() const;

  void start(SourceCallbacks callbacks) override;
  void stop() override;
  std::string describe() const override;

 private:
  std::string fingerprint() const;
  void run();

  FilesSourceOptions options_;
  SourceCallbacks callbacks_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mutex_
};

}  // namespace spiffe_tunnel::workload

#pragma once
// The listening sockets a service manager passed to this process (systemd socket activation, as
// sd_listen_fds_with_names(3) reads them): LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, the
// descriptors numbered from 3. A tunnel with `listen: systemd:NAME` takes the one named NAME
// (FileDescriptorName= in the .socket unit). Used by the main thread only.

#include <string>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/base/unique_fd.h"

namespace spiffe_tunnel::app {

class ActivatedSockets {
 public:
  // Reads the variables and unsets them (children must not see them), and marks each passed
  // descriptor close-on-exec. No sockets when LISTEN_PID is absent or names another process.
  // Changes the environment: call before any other thread starts.
  static base::Result<ActivatedSockets> take_from_environment();

  // The descriptor passed under `name`; an error when none or several carry that name. It stays
  // owned here (open for the daemon's life, as systemd keeps it open too).
  base::Result<int> take(const std::string& name);
  // Warns about each descriptor nobody took and closes it.
  void close_unused();
  std::size_t size() const { return sockets_.size(); }

 private:
  struct Passed {
    std::string name;
    base::UniqueFd fd;
    bool taken = false;
  };
  std::vector<Passed> sockets_;
};

}  // namespace spiffe_tunnel::app

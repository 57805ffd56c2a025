#pragma once
// Parsing of Workload API endpoint addresses (SPIFFE Workload Endpoint §4, SPIFFE.md §3), private
// to the workload module. Pure functions; any thread may call them.

#include <string>
#include <string_view>

#include "spiffe_tunnel/base/result.h"

namespace spiffe_tunnel::workload {

// Maps "unix:///abs/path" to "unix:/abs/path" and "tcp://IP:port" to "ipv4:IP:port" or
// "ipv6:[IP]:port". Errors name the rule the address breaks.
base::Result<std::string> endpoint_to_grpc_target(std::string_view address);

}  // namespace spiffe_tunnel::workload

#pragma once
// `spiffe-tunnel demo`: makes two throwaway trust domains (site-a.demo, site-b.demo) with their
// own CAs, starts a server tunnel for site B in front of an echo service and a client tunnel for
// site A pointing at it, sends a message through both, shows a peer from an unknown trust domain
// being refused, and prints the commands to repeat it by hand.

#include <string>

namespace spiffe_tunnel::app {

struct DemoOptions {
  std::string dir;    // "" = a fresh temporary directory
  bool wait = false;  // keep the tunnels running until Ctrl-C
};

int run_demo(const DemoOptions& options);

}  // namespace spiffe_tunnel::app

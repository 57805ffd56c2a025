#pragma once
// Command-line interface: subcommands and their flags. Flags for ad-hoc tunnels build the same
// config::Config a YAML file does, and go through the same validation.

namespace spiffe_tunnel::app {

// Parses argv, runs the chosen subcommand, returns the exit code.
int run_cli(int argc, char** argv);

}  // namespace spiffe_tunnel::app

#include "cli.h"

int main(int argc, char** argv) { return spiffe_tunnel::app::run_cli(argc, argv); }

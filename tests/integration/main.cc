// Integration tests boot real guests. Every instance they start lives under a runtime root
// of their own, so they never touch an operator's instances.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "harness.h"

int main(int argc, char** argv) {
  immortal::test::prepare_environment();
  int failed = Catch::Session().run(argc, argv);
  // Detached supervisors report sanitizer findings only into their own logs: fail on them too.
  int findings = immortal::test::sanitizer_findings();
  immortal::test::cleanup_environment();
  return failed + findings;
}

// immortal-repair-agent --report: reads the kernel parts of one bundle's report from the
// bundle's snapshot, inside the sandbox, and exits (docs/protocol.md, "Report agent").
#pragma once

namespace immortal::repair {

int run_report(int argc, char** argv);

}  // namespace immortal::repair

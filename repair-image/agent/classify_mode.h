// immortal-repair-agent --classify: which guest pages a bundle's snapshot needs (kernel, free,
// user, page cache), read from the kernel's own struct page array in a sandboxed process, so the
// supervisor parses none of it. Long-lived: started for each profile, asked at each snapshot
// while the guest is stopped (docs/protocol.md, "Page-class agent").
#pragma once

namespace immortal::repair {

int run_classify(int argc, char** argv);

}  // namespace immortal::repair

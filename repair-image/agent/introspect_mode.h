// immortal-repair-agent --introspect: the host's live views of a guest (`immortal ps`, `lsmod`,
// `dmesg`) read from its RAM through the newest profile, inside the sandbox; one process per
// request (docs/protocol.md, "Introspection agent").
#pragma once

namespace immortal::repair {

int run_introspect(int argc, char** argv);

}  // namespace immortal::repair

// Directories that hold what a guest left us (bundles with its memory, instance state, sockets),
// made so that no other local user can redirect or read them. The path is walked one component
// at a time through directory descriptors: a component missing is created with mode 0700; a
// symbolic link is followed only where its directory is writable by no one but root and us (as
// /var/crash is not on some distributions); a component in a directory others may write must
// be ours. The directory itself must end up ours and writable by no one else — an existing one
// is never chmod'ed (it may be /tmp or a home directory): it is refused with what to do instead.
#pragma once

#include <string>

namespace immortal {

// Throws Error(ExitCode::failure) naming the component and the reason. `what` names the
// directory in messages ("the bundle directory"). private_only: also refuse an existing
// directory that others may read or enter (mode & 077), as the runtime root must be.
void ensure_private_directory(const std::string& path, const std::string& what, bool private_only = false);

}  // namespace immortal

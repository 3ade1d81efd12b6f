// Errors that reach a person: one message naming the failure and its cause, and a
// distinct exit status per kind of failure (documented in docs/operator-guide.md).
//
// Convention: code that can fail on outside input (files, guest memory, guest messages,
// QEMU, the CLI) throws immortal::Error; the CLI boundary prints `immortal: <message>` and
// exits with error.exit_code(). Guest-controlled data never reaches an assert.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace immortal {

enum class ExitCode : int {
  ok = 0,
  failure = 1,        // anything not listed below
  usage = 2,          // bad command line (unknown option, bad value)
  bad_input = 3,      // a file or value given to us is missing, unreadable or malformed
  qemu = 4,           // QEMU missing, failed to start, exited or misbehaved
  agent = 5,          // the guest agent did not answer or broke the protocol
  no_instance = 6,    // no running instance of that name
  guest_crashed = 7,  // the guest kernel crashed and was not recovered
  timeout = 8,        // an operation did not finish in its time limit
  unsupported = 9,    // a file in a format version newer than this immortal reads; a domain it cannot drive
  libvirt = 10,       // libvirt refused or failed (its own message follows)
};

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ExitCode code() const { return code_; }
  int exit_code() const { return static_cast<int>(code_); }

 private:
  ExitCode code_;
};

template <typename... Args>
[[noreturn]] void fail(ExitCode code, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

// "<what>: <strerror(err)>", for failed system calls.
std::string os_message(const std::string& what, int err);
[[noreturn]] void fail_os(ExitCode code, const std::string& what, int err);

}  // namespace immortal

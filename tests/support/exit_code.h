// The exit status a piece of code fails with: what the CLI would exit with for that error.
#pragma once

#include "base/error.h"

#include <functional>

namespace immortal::test {

// ExitCode::ok when f returns, else the code of the Error it throws.
inline ExitCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return ExitCode::ok;
}

}  // namespace immortal::test

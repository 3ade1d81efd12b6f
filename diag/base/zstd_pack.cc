// Packing, for the supervisor's side only (zstd_frame.cc says why it is a file of its own).
#include "base/zstd_frame.h"

#include "base/error.h"

#include <zstd.h>

namespace immortal {

std::string zstd_pack(std::string_view bytes, int level) {
  std::string out(ZSTD_compressBound(bytes.size()), '\0');
  std::size_t n = ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), level);
  if (ZSTD_isError(n)) fail(ExitCode::failure, "cannot compress: {}", ZSTD_getErrorName(n));
  out.resize(n);
  out.shrink_to_fit();
  return out;
}

}  // namespace immortal

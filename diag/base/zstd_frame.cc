// Unpacking only: the static repair agent links this file, and zstd's compressor (0.4 MB of every
// repair VM's initramfs) stays out of it (zstd_pack.cc).
#include "base/zstd_frame.h"

#include "base/error.h"

#include <zstd.h>

namespace immortal {

std::size_t zstd_declared_size(std::string_view frame, std::size_t max, std::string_view what) {
  // The size the frame declares decides the allocation, so it is checked before anything is made.
  unsigned long long size = ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (size == ZSTD_CONTENTSIZE_ERROR) fail(ExitCode::bad_input, "{} is not a zstd frame", what);
  if (size == ZSTD_CONTENTSIZE_UNKNOWN) fail(ExitCode::bad_input, "{}: the zstd frame does not say its size", what);
  if (size > max) fail(ExitCode::bad_input, "{} unpacks to {} bytes, more than {}", what, size, max);
  return static_cast<std::size_t>(size);
}

void zstd_unpack_into(std::string_view frame, std::span<std::uint8_t> out, std::string_view what) {
  std::size_t size = zstd_declared_size(frame, out.size(), what);
  if (size != out.size()) fail(ExitCode::bad_input, "{} unpacks to {} bytes, not {}", what, size, out.size());
  std::size_t n = ZSTD_decompress(out.data(), out.size(), frame.data(), frame.size());
  if (ZSTD_isError(n)) fail(ExitCode::bad_input, "{} does not unpack: {}", what, ZSTD_getErrorName(n));
  if (n != out.size()) fail(ExitCode::bad_input, "{} unpacks to {} bytes, not the {} it declares", what, n, out.size());
}

std::string zstd_unpack(std::string_view frame, std::size_t max, std::string_view what) {
  std::string out(zstd_declared_size(frame, max, what), '\0');
  zstd_unpack_into(frame, {reinterpret_cast<std::uint8_t*>(out.data()), out.size()}, what);
  return out;
}

}  // namespace immortal

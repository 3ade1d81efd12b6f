// Packing, for the supervisor's side only (zstd_frame.cc says why it is a file of its own).
#include "base/zstd_frame.h"

#include "base/error.h"

#include <zstd.h>

#include <memory>

namespace immortal {

std::string zstd_pack(std::string_view bytes, int level) {
  // With a checksum of the content (4 bytes a frame), which unpacking verifies: damage to a frame
  // is then an error, not bytes that merely look plausible.
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), &ZSTD_freeCCtx);
  if (!cctx) fail(ExitCode::failure, "cannot compress: no memory for zstd's context");
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1);
  std::string out(ZSTD_compressBound(bytes.size()), '\0');
  std::size_t n = ZSTD_compress2(cctx.get(), out.data(), out.size(), bytes.data(), bytes.size());
  if (ZSTD_isError(n)) fail(ExitCode::failure, "cannot compress: {}", ZSTD_getErrorName(n));
  out.resize(n);
  out.shrink_to_fit();
  return out;
}

}  // namespace immortal

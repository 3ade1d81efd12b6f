// Fuzz target: a bundle is untrusted input (`immortal diag BUNDLE`). The first byte picks what
// the rest is: a manifest, a report (with a valid manifest around it), or a .tar.zst archive.
// The reader may only throw Error; the report must render whatever it holds.
#include "base/error.h"
#include "bundle/bundle_reader.h"
#include "bundle/bundle_writer.h"
#include "bundle/report_text.h"

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;
using namespace immortal;

namespace {

const std::string& scratch() {
  static std::string dir = [] {
    std::string t = "/tmp/bundle-fuzz-XXXXXX";
    if (!::mkdtemp(t.data())) std::abort();
    return t;
  }();
  return dir;
}

void write(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string dir = scratch() + "/b";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  std::string target = dir;
  switch (data[0] % 3) {
    case 0:  // the manifest itself
      write(dir + "/manifest.json", body);
      write(dir + "/report.json", "{}");
      break;
    case 1: {  // a report behind a correct manifest
      write(dir + "/report.json", body);
      std::string sha = bundle::sha256_file(dir + "/report.json");
      write(dir + "/manifest.json", R"({"format":"immortal-bundle","version":1,"files":[{"name":"report.json","bytes":)" +
                                        std::to_string(body.size()) + R"(,"sha256":")" + sha + R"("}]})");
      break;
    }
    default:  // an archive
      target = scratch() + "/b.tar.zst";
      write(target, body);
      break;
  }
  try {
    auto b = bundle::OpenedBundle::open(target);
    (void)bundle::render_report(b.report());
  } catch (const Error&) {
  }
  return 0;
}

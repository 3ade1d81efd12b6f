// Fuzz target: a profile directory is untrusted input (it travels with bundles). The input is
// split into profile.json and kallsyms; loading and symbol parsing must fail cleanly or work. The
// second part is also given as a packed file (kallsyms.zst, as the repair payload holds it), and
// cut into the payload's guest part (kallsyms_without_image), which must answer as the whole.
#include "base/error.h"
#include "kernel/symbols.h"
#include "profile/guest_profile.h"

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace fs = std::filesystem;
  static const fs::path dir = fs::temp_directory_path() / ("immortal-profile-fuzz-" + std::to_string(::getpid()));
  std::string input(reinterpret_cast<const char*>(data), size);
  auto split = input.find('\0');
  std::string manifest = input.substr(0, split), kallsyms = split == std::string::npos ? "" : input.substr(split + 1);
  fs::create_directories(dir / "btf");
  std::ofstream(dir / "profile.json", std::ios::trunc) << manifest;
  std::ofstream(dir / "kallsyms", std::ios::trunc) << kallsyms;
  std::ofstream(dir / "modules", std::ios::trunc) << "";
  std::ofstream(dir / "btf" / "vmlinux", std::ios::trunc) << "x";
  try {
    immortal::GuestProfile::load(dir.string());
  } catch (const immortal::Error&) {
  }
  try {
    std::map<std::string, std::string_view> entries = {
        {"profile.json", manifest}, {"kallsyms.zst", kallsyms}, {"modules", ""}, {"btf/vmlinux", "x"}};
    immortal::GuestProfile::parse(immortal::GuestProfile::files_from(entries, "fuzz"), "fuzz");
  } catch (const immortal::Error&) {
  }
  try {
    auto symbols = immortal::SymbolTable::from_kallsyms(kallsyms);
    (void)symbols.describe(0xffffffff81000000ull);
    // The repair payload's kallsyms (the guest's part): without the lines the image's block holds.
    // Cut against the text's own block, it must be cut, and a table of what is left beside that
    // block must answer as the whole text's.
    if (const auto& image = symbols.image_symbols()) {
      auto rest = immortal::kallsyms_without_image(kallsyms, *image, symbols.image_base());
      if (!rest) __builtin_trap();
      auto part = immortal::SymbolTable::from_kallsyms(*rest, image, symbols.image_base());
      if (part.size() != symbols.size()) __builtin_trap();
      for (std::uint64_t a : {symbols.image_base(), symbols.image_base() + 0x10, std::uint64_t{0xffffffff81000000}, std::uint64_t{0xffffffffc0000010}})
        if (part.describe(a) != symbols.describe(a)) __builtin_trap();
      // Another base: not this text's block.
      if (immortal::kallsyms_without_image(kallsyms, *image, symbols.image_base() + 0x200000)) __builtin_trap();
    }
  } catch (const immortal::Error&) {
  }
  return 0;
}

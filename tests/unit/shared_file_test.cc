// Files the host's instances share (vmm/repair/shared_file.h): written once, held by each user,
// removed by the next user once nobody holds them. Each SharedFile opens its own descriptor, so two
// in one process hold and exclude each other as two supervisors' would.
#include "base/error.h"
#include "kernel/symbols.h"
#include "repair/shared_file.h"
#include "repair/shared_symbols.h"

#include <fmt/format.h>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <filesystem>
#include <fstream>

using namespace immortal;
using namespace immortal::vmm;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  std::string path = (fs::temp_directory_path() / ("immortal-shared-file-" + std::to_string(::getpid()))).string();
  ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST_CASE("shared file: written once, held by every user, removed by a later one once nobody holds it", "[shared-file]") {
  TempDir t;
  std::string dir = t.path + "/.repair-shared";
  int writes = 0;
  auto write = [&](const std::string& text) {
    return [&, text](const std::string& path) {
      ++writes;
      std::ofstream(path) << text;
    };
  };
  SharedFile a = SharedFile::acquire(dir, "one.img", write("first"));
  SharedFile b = SharedFile::acquire(dir, "one.img", write("second"));
  CHECK(writes == 1);  // the second user found it
  CHECK(a.path() == dir + "/one.img");
  CHECK(b.path() == a.path());
  CHECK(a.bytes() == 5);
  CHECK(a.held());
  struct stat st {};
  REQUIRE(::stat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);  // made private

  // Another file (an upgraded agent's) leaves the held one alone …
  SharedFile c = SharedFile::acquire(dir, "two.img", write("other"));
  CHECK(fs::exists(a.path()));
  // … and the next user after its holders went removes it.
  a = SharedFile();
  CHECK(remove_unheld_files(dir, "two.img") == 0);  // b holds it still
  b = SharedFile();
  SharedFile d = SharedFile::acquire(dir, "two.img", write("other"));
  CHECK_FALSE(fs::exists(dir + "/one.img"));
  CHECK(fs::exists(c.path()));
  CHECK(writes == 2);

  // A partial file a dead writer left goes; one a live writer holds stays.
  std::ofstream(dir + "/three.img.partial.1") << "torn";
  int writer = ::open((dir + "/four.img.partial.2").c_str(), O_WRONLY | O_CREAT, 0600);
  REQUIRE(writer >= 0);
  REQUIRE(::flock(writer, LOCK_EX) == 0);
  CHECK(remove_unheld_files(dir, "two.img") == 1);
  CHECK_FALSE(fs::exists(dir + "/three.img.partial.1"));
  CHECK(fs::exists(dir + "/four.img.partial.2"));
  ::close(writer);
}

TEST_CASE("shared file: a writer that fails leaves nothing behind, and bad names are refused", "[shared-file]") {
  TempDir t;
  std::string dir = t.path + "/shared";
  CHECK_THROWS_AS(SharedFile::acquire(dir, "x.img", [](const std::string&) { throw Error(ExitCode::failure, "no agent"); }),
                  Error);
  CHECK(fs::is_empty(dir));
  for (const char* bad : {"", "../escape", ".hidden", "a/b"})
    CHECK_THROWS_AS(SharedFile::acquire(dir, bad, [](const std::string&) {}), Error);
}

TEST_CASE("shared file: the kernel image's symbols of two guests of one kernel (other KASLR slides) are one file "
          "of the host, mapped by both; a damaged file under its name is written again",
          "[shared-file]") {
  TempDir t;
  std::string dir = t.path + "/.repair-shared";
  auto kallsyms = [](std::uint64_t base) {
    std::string text;
    for (int i = 0; i < 500; ++i) text += fmt::format("{:016x} T fn_{}\n", base + 0x40u * static_cast<unsigned>(i), i);
    return text + "ffffffffc0600000 t helper\t[mod_a]\n";
  };
  SymbolTable a = SymbolTable::from_kallsyms(kallsyms(0xffffffff81000000u));
  SymbolTable b = SymbolTable::from_kallsyms(kallsyms(0xffffffff9e400000u));
  std::string why;
  auto host_a = host_image_symbols(dir, *a.image_symbols(), &why);
  INFO(why);
  REQUIRE(host_a);
  auto host_b = host_image_symbols(dir, *b.image_symbols(), &why);
  REQUIRE(host_b);
  CHECK(a.share_image(host_a));
  CHECK(b.share_image(host_b));
  CHECK(b.address_of("fn_7") == 0xffffffff9e400000u + 7 * 0x40u);
  CHECK(b.lookup(0xffffffff9e400000u + 7 * 0x40u + 1)->name() == "fn_7");
  std::string file = dir + "/" + image_symbols_file_name(a.image_symbols()->digest());
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().string() == file;
  CHECK(files == 1);
  // A power of two long, as a repair VM's window needs; opened for one.
  std::uint64_t window = 0;
  CHECK(open_host_image_symbols(dir, *host_a, window));
  CHECK(window == std::bit_ceil(a.image_symbols()->bytes().size()));

  // Nobody holds it any more, and it is damaged: the next user writes it again.
  a = SymbolTable();
  b = SymbolTable();
  host_a.reset();
  host_b.reset();
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(70);
    f.write("\xff\xff\xff\xff", 4);
  }
  SymbolTable c = SymbolTable::from_kallsyms(kallsyms(0xffffffff81000000u));
  auto host_c = host_image_symbols(dir, *c.image_symbols(), &why);
  INFO(why);
  REQUIRE(host_c);
  CHECK(c.share_image(host_c));
  CHECK(c.address_of("fn_3") == 0xffffffff81000000u + 3 * 0x40u);
}

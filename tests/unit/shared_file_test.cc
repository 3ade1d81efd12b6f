// Files the host's instances share (vmm/repair/shared_file.h): written once, held by each user,
// removed by the next user once nobody holds them. Each SharedFile opens its own descriptor, so two
// in one process hold and exclude each other as two supervisors' would.
#include "base/content_digest.h"
#include "base/error.h"
#include "kernel/symbols.h"
#include "types/btf_types.h"
#include "repair/shared_file.h"
#include "repair/shared_kernel_files.h"

#include <fmt/format.h>

#include <bpf/btf.h>
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
  CHECK(open_host_kernel_file(dir + "/" + image_symbols_file_name(host_a->digest()), host_a->bytes().size(), window));
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

namespace {

// A small BTF, as a profile carries it: a struct with a member.
std::string small_btf(const char* member) {
  struct btf* b = btf__new_empty();
  REQUIRE(b);
  int int_id = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  REQUIRE(btf__add_struct(b, "task_struct", 8) > 0);
  REQUIRE(btf__add_field(b, "pid", int_id, 0, 0) == 0);
  REQUIRE(btf__add_field(b, member, int_id, 32, 0) == 0);
  __u32 size = 0;
  const void* raw = btf__raw_data(b, &size);
  std::string bytes(static_cast<const char*>(raw), size);
  btf__free(b);
  return bytes;
}

}  // namespace

TEST_CASE("shared file: the BTF of two guests of one kernel is one file of the host, read by both; another kernel's "
          "is another file; a damaged file under its name is written again",
          "[shared-file]") {
  TempDir t;
  std::string dir = t.path + "/.repair-shared";
  auto a = BtfTypes::parse(small_btf("tgid")), b = BtfTypes::parse(small_btf("tgid"));
  std::string why;
  auto host_a = host_kernel_btf(dir, *a, &why);
  INFO(why);
  REQUIRE(host_a);
  auto host_b = host_kernel_btf(dir, *b, &why);
  REQUIRE(host_b);
  CHECK(host_a->path == host_b->path);
  CHECK(host_a->path == dir + "/" + kernel_btf_file_name(a->digest()));
  REQUIRE(a->share(host_a->bytes, host_a->keeper));
  REQUIRE(b->share(host_b->bytes, host_b->keeper));
  CHECK(a->bytes().data() != b->bytes().data());  // two mappings of one file
  CHECK(b->field("task_struct", "tgid")->byte_offset() == 4);
  std::uint64_t window = 0;
  CHECK(open_host_kernel_file(host_a->path, a->bytes().size(), window));
  CHECK(window == std::bit_ceil(a->bytes().size()));
  CHECK_FALSE(open_host_kernel_file(host_a->path, window + 1, window));

  auto other = BtfTypes::parse(small_btf("tgid_"));
  auto host_other = host_kernel_btf(dir, *other, &why);
  REQUIRE(host_other);
  CHECK(host_other->path != host_a->path);

  // Nobody holds it any more, and it is damaged: the next user writes it again.
  std::string file = host_a->path;
  a.reset();
  b.reset();
  host_a.reset();
  host_b.reset();
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40);
    f.write("\xff\xff", 2);
  }
  auto c = BtfTypes::parse(small_btf("tgid"));
  auto host_c = host_kernel_btf(dir, *c, &why);
  INFO(why);
  REQUIRE(host_c);
  CHECK(c->share(host_c->bytes, host_c->keeper));
  CHECK(c->field("task_struct", "tgid")->byte_offset() == 4);
}

TEST_CASE("shared file: a kernel image's ORC tables are one file of the host per content", "[shared-file]") {
  TempDir t;
  std::string dir = t.path + "/.repair-shared";
  std::vector<std::uint8_t> tables(10 * 1000);
  for (std::size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<std::uint8_t>(i * 7);
  std::string why;
  auto a = host_kernel_orc(dir, tables, &why);
  INFO(why);
  REQUIRE(a);
  auto b = host_kernel_orc(dir, tables, &why);
  REQUIRE(b);
  CHECK(a->path == b->path);
  CHECK(a->path == dir + "/" + kernel_orc_file_name(content_digest(tables)));
  CHECK(std::equal(a->bytes.begin(), a->bytes.end(), tables.begin(), tables.end()));
  std::uint64_t window = 0;
  CHECK(open_host_kernel_file(a->path, tables.size(), window));
  CHECK(window == std::bit_ceil(tables.size()));
  tables[5] ^= 1;
  auto c = host_kernel_orc(dir, tables, &why);
  REQUIRE(c);
  CHECK(c->path != a->path);
}

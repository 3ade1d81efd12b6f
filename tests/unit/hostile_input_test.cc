// What a hostile guest can hand the host's parsers, beyond what the introspection tests forge:
// types that would make a lookup explode, and text that would drive the operator's terminal.
#include "base/budgets.h"
#include "base/error.h"
#include "base/private_dir.h"
#include "base/terminal_text.h"
#include "console_log.h"
#include "types/btf_types.h"
#include "x86_64/page_tables.h"

#include "support/exit_code.h"
#include "support/fake_kernel.h"

#include <bpf/btf.h>
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

using namespace immortal;

namespace {

// What BtfTypes makes of a BTF built here with libbpf (which is freed).
std::unique_ptr<BtfTypes> parse_built(struct btf* b) {
  __u32 size = 0;
  const void* raw = btf__raw_data(b, &size);
  std::string bytes = raw ? std::string(static_cast<const char*>(raw), size) : std::string();
  btf__free(b);
  REQUIRE(!bytes.empty());
  return BtfTypes::parse(bytes);
}

}  // namespace

TEST_CASE("a BTF that embeds one anonymous struct in itself again and again is looked up in bounded time",
          "[hostile]") {
  struct btf* b = btf__new_empty();
  REQUIRE(b);
  int int_id = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  REQUIRE(int_id > 0);
  // Level 0 holds x; each level above holds 40 anonymous copies of the one below, 16 deep:
  // a search without memory of what it has seen visits 40^16 members.
  int inner = btf__add_struct(b, nullptr, 4);
  REQUIRE(inner > 0);
  REQUIRE(btf__add_field(b, "x", int_id, 0, 0) == 0);
  for (int level = 1; level <= immortal::budget::kMemberDepth; ++level) {
    int outer = btf__add_struct(b, nullptr, 4);
    REQUIRE(outer > 0);
    for (int k = 0; k < 40; ++k) REQUIRE(btf__add_field(b, nullptr, inner, 0, 0) == 0);
    inner = outer;
  }
  REQUIRE(btf__add_struct(b, "victim", 4) > 0);
  for (int k = 0; k < 40; ++k) REQUIRE(btf__add_field(b, nullptr, inner, 0, 0) == 0);
  REQUIRE(btf__add_field(b, "last", int_id, 0, 0) == 0);
  auto types = parse_built(b);

  auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(types->field("victim", "nosuch").has_value());
  CHECK(types->field("victim", "last").has_value());
  // x is 17 levels down: one more than a lookup descends.
  CHECK_FALSE(types->field("victim", "x").has_value());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));  // a hang, not a timing
}

TEST_CASE("BTF types are found by name as libbpf would: the first struct, else the first union", "[hostile]") {
  struct btf* b = btf__new_empty();
  REQUIRE(b);
  int int_id = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  int long_id = btf__add_int(b, "long", 8, BTF_INT_SIGNED);
  REQUIRE(btf__add_union(b, "twice", 8) > 0);       // a union first …
  REQUIRE(btf__add_field(b, "in_union", long_id, 0, 0) == 0);
  REQUIRE(btf__add_struct(b, "twice", 16) > 0);     // … then the struct the readers mean
  REQUIRE(btf__add_field(b, "a", int_id, 0, 0) == 0);
  REQUIRE(btf__add_field(b, "b", long_id, 64, 0) == 0);
  REQUIRE(btf__add_struct(b, "twice", 4) > 0);      // a later struct of the same name: not chosen
  REQUIRE(btf__add_field(b, "b", int_id, 0, 0) == 0);
  REQUIRE(btf__add_union(b, "only_union", 8) > 0);
  REQUIRE(btf__add_field(b, "u", long_id, 0, 0) == 0);
  auto types = parse_built(b);

  CHECK(types->struct_size("twice") == 16);
  CHECK(types->struct_size("only_union") == 8);
  CHECK_FALSE(types->struct_size("missing").has_value());
  for (int again = 0; again < 2; ++again) {  // the second answers are the remembered ones
    INFO("lookup " << again);
    auto f = types->field("twice", "b");
    REQUIRE(f);
    CHECK(f->bit_offset == 64);
    CHECK(f->size == 8);
    CHECK_FALSE(types->field("twice", "in_union").has_value());
    CHECK_FALSE(types->field("missing", "b").has_value());
    CHECK(types->field("only_union", "u").has_value());
  }
}

TEST_CASE("guest text reaches a terminal with its controls escaped", "[hostile]") {
  CHECK(terminal_safe("plain text, tabs\tand UTF-8: é €") == "plain text, tabs\tand UTF-8: é €");
  CHECK(terminal_safe("\x1b]0;owned\x07\x1b[2J") == "\\x1b]0;owned\\x07\\x1b[2J");
  CHECK(terminal_safe("a\nb\r") == "a\\x0ab\\x0d");
  CHECK(terminal_safe("a\nb", true) == "a\nb");
  CHECK(terminal_safe("del\x7f") == "del\\x7f");
  CHECK(terminal_safe("csi \xc2\x9b" "31m") == "csi \\xc2\\x9b31m");  // C1 CSI in UTF-8
  CHECK(terminal_safe(std::string("nul\0byte", 8)) == "nul\\x00byte");
}

TEST_CASE("private directories are not redirected, taken from others or chmod'ed", "[hostile]") {
  char tmpl[] = "/tmp/immortal-private-XXXXXX";
  REQUIRE(::mkdtemp(tmpl));
  std::string base = tmpl;
  // A directory everyone may write, as /tmp or some distributions' /var/crash.
  std::string shared = base + "/shared";
  REQUIRE(::mkdir(shared.c_str(), 0777) == 0);
  REQUIRE(::chmod(shared.c_str(), 01777) == 0);
  auto code = test::code_of;
  // Created where missing, 0700.
  CHECK(code([&] { ensure_private_directory(shared + "/immortal/web", "the bundle directory"); }) == ExitCode::ok);
  struct stat st {};
  REQUIRE(::stat((shared + "/immortal/web").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  // A link planted in the shared directory is not followed.
  REQUIRE(::symlink("/etc", (shared + "/planted").c_str()) == 0);
  CHECK(code([&] { ensure_private_directory(shared + "/planted/x", "the bundle directory"); }) == ExitCode::failure);
  CHECK(::access("/etc/x", F_OK) != 0);
  // Not ours (when we can give one away: as root).
  if (::geteuid() == 0) {
    REQUIRE(::mkdir((shared + "/theirs").c_str(), 0700) == 0);
    REQUIRE(::chown((shared + "/theirs").c_str(), 65534, 65534) == 0);
    CHECK(code([&] { ensure_private_directory(shared + "/theirs/web", "the bundle directory"); }) == ExitCode::failure);
  }
  // An existing directory open to others is refused, and left as it was.
  CHECK(code([&] { ensure_private_directory(shared, "the runtime directory", true); }) == ExitCode::failure);
  REQUIRE(::stat(shared.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 01777);
  std::string readable = base + "/readable";
  REQUIRE(::mkdir(readable.c_str(), 0755) == 0);
  CHECK(code([&] { ensure_private_directory(readable, "the bundle directory"); }) == ExitCode::ok);
  CHECK(code([&] { ensure_private_directory(readable, "the runtime directory", true); }) == ExitCode::failure);
  std::system(("rm -rf '" + base + "'").c_str());
}

TEST_CASE("a console the guest floods stays within its budget and is read back from its end only", "[hostile]") {
  char tmpl[] = "/tmp/immortal-console-XXXXXX";
  REQUIRE(::mkdtemp(tmpl));
  std::string path = std::string(tmpl) + "/console.log";
  {
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 200000; ++i) out << "line " << i << " of a chatty guest\n";  // ~5 MiB
  }
  vmm::ConsoleLog log(path, false);
  std::string before = log.last_lines(2);
  CHECK_THAT(before, Catch::Contains("line 199999 of a chatty guest"));
  log.limit_size(4 << 20);
  CHECK(std::filesystem::file_size(path) == 0);  // started again
  CHECK(std::filesystem::file_size(path + ".1") == 1 << 20);  // its last MiB kept
  std::ifstream kept(path + ".1");
  std::string last;
  for (std::string line; std::getline(kept, line);) last = line;
  CHECK(last == "line 199999 of a chatty guest");
  // One endless line (no newline at all): only the file's end is read, and shown escaped.
  {
    std::ofstream out(path, std::ios::binary);
    out << std::string(8 << 20, 'x') << "\x1b[2J";
  }
  std::string tail = log.last_lines(3);
  CHECK(tail.size() < 70 * 1024);
  CHECK(tail.find('\x1b') == std::string::npos);
  std::system(("rm -rf '" + std::string(tmpl) + "'").c_str());
}

TEST_CASE("page tables that loop back into themselves translate in bounded steps", "[hostile]") {
  // Every entry of the top table points at the top table itself: a walk that followed entries
  // until it found a page would never end; ours takes four (or five) steps and stops.
  test::VectorMemory ram(1 << 20);
  for (std::uint64_t i = 0; i < 512; ++i) ram.put<std::uint64_t>(0x1000 + i * 8, 0x1000 | 0x3);
  auto start = std::chrono::steady_clock::now();
  std::size_t mapped = 0;
  for (std::uint64_t v = 0; v < (1ull << 48); v += (1ull << 39) / 7) {
    for (bool five : {false, true}) {
      auto p = x86_64::translate(ram, 0x1000, v | (v >> 47 ? 0xffff000000000000ull : 0), five);
      if (p) {
        ++mapped;
        CHECK(*p < (1u << 20));  // only ever the looping table itself
      }
    }
  }
  CHECK(mapped > 0);
  // Huge-page bits on every level, and entries pointing outside memory: an answer or a fault.
  for (std::uint64_t i = 0; i < 512; ++i) ram.put<std::uint64_t>(0x1000 + i * 8, (0xfff000ull + i * 0x1000) | 0x83);
  for (std::uint64_t v = 0; v < (1ull << 47); v += (1ull << 39) / 3) {
    try {
      (void)x86_64::translate(ram, 0x1000, v, false);
    } catch (const MemoryFault&) {
    }
  }
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
}
